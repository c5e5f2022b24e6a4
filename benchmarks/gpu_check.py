"""The checks for a lent GPU, as one script: under 8 minutes on one H100/H200.

Steps (each timed, all output also written to OUT/gpu_check.txt):
- ``speed``: ``attack_speed.py`` on the device, ConvNet width 64 and ResNet-18 at B = 1, 8, 32, 64: ms per plain
  gradient and per IG iteration, their ratio, peak memory;
- ``clipping``: ``per_sample_clipping.py`` at B = 8, 32: the vectorised per-sample clipping against the loop;
- ``restarts``: ``restart_batching.py``: 8 IG restarts vmapped together against one restart and against 8 in turn
  (the GPU target: at most 2x one restart);
- ``double``: ``conv_double_backward.py``: the share of torch's convolution double backward spent on the weight
  derivative nobody asked for (cuDNN's path, beside the CPU figure);
- ``smoke``: the smoke suite on the device, judged by the regression gate against the committed CPU baseline (the
  gate's tolerances; its exact settings are owed to within 0.01 dB only where the result is exact);
- ``shared``: the smoke suite again with several cells sharing the card (``--workers``), wall time beside ``smoke``.

It runs on CPU too (``--device cpu`` takes smaller sizes), which is how it is tested where no GPU is lent. Usage:

    python benchmarks/gpu_check.py [--device cuda|cpu] [--out DIR] [--steps speed,clipping,restarts,double,smoke,shared]
                                   [--workers 4]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("speed", "clipping", "restarts", "double", "smoke", "shared")
SIZES = {  # per device: (attack_speed models, batches, repeats), (clipping batches, repeats), (restart models,
    # iterations), double backward repeats
    "cuda": (("convnet64,resnet18", "1,8,32,64", "5"), ("8,32", "5"), ("lenet,mlp,convnet16,convnet64", "20"), "7"),
    "cpu": (("convnet16", "1,2", "1"), ("2", "1"), ("lenet", "2"), "1"),
}


def commands(device: str, out: Path, workers: int) -> dict[str, list[str]]:
    (models, batches, repeats), (clip_batches, clip_repeats), (restart_models, iterations), double = SIZES[device]
    python, giabench = sys.executable, [sys.executable, "-m", "giabench"]
    gate = ["regress", "--suite", "smoke", "--baseline", str(ROOT / "leaderboard/baselines/smoke.csv"),
            "--device", device, "--quiet"]
    return {
        "speed": [python, str(ROOT / "benchmarks/attack_speed.py"), "--device", device, "--threads", "1",
                  "--models", models, "--batches", batches, "--repeats", repeats],
        "clipping": [python, str(ROOT / "benchmarks/per_sample_clipping.py"), "--device", device, "--threads", "1",
                     "--batches", clip_batches, "--repeats", clip_repeats],
        "restarts": [python, str(ROOT / "benchmarks/restart_batching.py"), "--device", device, "--threads", "1",
                     "--models", restart_models, "--iterations", iterations],
        "double": [python, str(ROOT / "benchmarks/conv_double_backward.py"), "--device", device, "--threads", "1",
                   "--repeats", double],
        "smoke": [*giabench, *gate, "--out", str(out / "smoke")],
        "shared": [*giabench, *gate, "--out", str(out / "shared"), "--workers", str(workers)],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=sorted(SIZES))
    parser.add_argument("--out", default="runs/gpu_check", help="folder for the runs and gpu_check.txt")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, of {', '.join(STEPS)}")
    parser.add_argument("--workers", type=int, default=4, help="cells sharing the device in the shared step")
    args = parser.parse_args()
    steps = args.steps.split(",")
    if unknown := [s for s in steps if s not in STEPS]:
        parser.error(f"unknown steps {unknown}; choose from {', '.join(STEPS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = commands(args.device, out, args.workers)
    failed = 0
    with open(out / "gpu_check.txt", "w") as log:
        def say(text: str) -> None:
            print(text, flush=True)
            log.write(text + "\n")

        say(f"gpu_check on {args.device}: steps {', '.join(steps)}")
        for step in steps:
            start = time.perf_counter()
            done = subprocess.run(todo[step], cwd=ROOT, capture_output=True, text=True)
            say(f"== {step} ({time.perf_counter() - start:.1f} s, exit {done.returncode}): {' '.join(todo[step])}")
            say(done.stdout.rstrip())
            if done.returncode:
                failed += 1
                say(done.stderr.rstrip()[-4000:])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
