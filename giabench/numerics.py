"""A cell's numerics: the settings that decide its floating-point results, pinned while it runs and stored with it.

Float32 optimization is chaotic: the same cell gives different numbers under another thread count (reductions are
split differently), another CPU kernel path (AVX2 vs AVX-512) or another device. So every cell runs under one
recorded setting, the same in-process and in worker processes:
- ``threads``: torch's intra-op threads and the BLAS/OpenMP pools of numpy and scipy (threadpoolctl), set for the
  cell and restored after it;
- ``device``: ``cpu`` or ``cuda``; on CUDA, TF32 is switched off and cuDNN picks deterministic kernels, so that
  ``dtype`` float32 means float32;
- ``dtype``: float32 (the default) or float64 (``--dtype float64``): torch's default floating type while the cell
  runs, so the model's weights, the client's update and the attacker's tensors are computed in it.
``hardware`` names the CPU model and the kernel path torch dispatched to (or the GPU); it is recorded, not pinned.
"""

from __future__ import annotations

import platform
from contextlib import contextmanager
from functools import cache

import torch

from giabench.errors import ConfigError

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def settings(device: str, threads: int, dtype: str = "float32") -> dict:
    """The numerics settings a cell is computed under (what a resumed run must repeat)."""
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ConfigError(f"--threads must be a whole number >= 1, got {threads!r}")
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return {"device": device, "threads": threads, "dtype": dtype}


@cache
def hardware(device: str) -> str:
    """The GPU's name, or the CPU's model with the vector kernel path torch uses (e.g. ``... [AVX512]``)."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model} ({platform.machine()}) [{torch.backends.cpu.get_cpu_capability()}]"


@contextmanager
def pinned(device: str, threads: int, dtype: str = "float32"):
    """Run the body with ``threads`` threads in torch and in the BLAS/OpenMP pools, ``dtype`` as torch's default
    floating type, and on CUDA without TF32 and with deterministic cuDNN kernels; every setting is restored
    afterwards."""
    from threadpoolctl import threadpool_limits

    saved, saved_dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_default_dtype(DTYPES[dtype])
    cuda = device.startswith("cuda")
    if cuda:
        flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
                 torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(saved)
        torch.set_default_dtype(saved_dtype)
        if cuda:
            (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) = flags
