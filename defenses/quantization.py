"""Quantization of the update, the compression baseline the SoK lists as bypassed by modern attacks. Each tensor u
(d entries) is quantized on its own:
- ``qsgd`` (Alistarh et al., NeurIPS 2017, Eq. 2, applied to buckets v of ``bucket`` consecutive entries, as in
  its experiments (512)): with s = ``levels``,
      Q(v_i) = ||v||_2 sign(v_i) xi_i / s,  xi_i = l + 1 with probability s |v_i| / ||v||_2 - l, else l,
      l = floor(s |v_i| / ||v||_2),
  unbiased (E[Q(u)] = u) with fresh randomness; sent as one norm per bucket (32 bits) and d signs and levels at
  fixed width (1 + ceil(log2(s + 1)) bits each; QSGD's Elias coding would send fewer).
- ``sign`` (signSGD, Bernstein et al., ICML 2018, with the scaled compressor C(u) = (||u||_1 / d) sign(u) of
  Karimireddy et al., ICML 2019, Alg. 1, so the server can average updates): 1 bit per entry and one 32-bit scale.
- ``fp16``: IEEE half precision, 16 bits per entry.
- ``uniform``: deterministic symmetric rounding to 2^(b-1) - 1 levels per side, b = ``bits``,
      Q(u) = Delta round(u / Delta),  Delta = max |u| / (2^(b-1) - 1),
  b bits per entry and one 32-bit scale.
The adaptive attacker (the mechanism is public, the randomness is not): against ``qsgd`` it matches the expectation
E[Q(u(x_hat))] = u(x_hat); against the deterministic schemes it matches Q(u(x_hat)) itself, differentiated by the
straight-through rule dQ/du = I (BPDA, Athalye, Carlini, Wagner, ICML 2018), since Q is piecewise constant.
Quantization gives no DP guarantee: epsilon is infinite.
"""

from __future__ import annotations

import math

import torch

from giabench.checks import Param
from giabench.contracts import Axis, Client
from giabench.registry import defense

SCHEMES = ("qsgd", "sign", "fp16", "uniform")


def straight_through(u: torch.Tensor, quantized: torch.Tensor) -> torch.Tensor:
    """The value of ``quantized`` (exactly: u - u is 0) with the derivative of ``u`` (BPDA's identity surrogate)."""
    return quantized.detach() + (u - u.detach())


def buckets(numel: int, bucket: int) -> int:
    return -(-numel // bucket)


def qsgd(u: torch.Tensor, levels: int, bucket: int, generator: torch.Generator) -> torch.Tensor:
    """One stochastic QSGD draw of ``u``, bucket by bucket (uniforms drawn on the CPU from ``generator``:
    device-independent)."""
    flat = u.flatten()
    rows = torch.nn.functional.pad(flat, (0, buckets(flat.numel(), bucket) * bucket - flat.numel()))
    rows = rows.view(-1, bucket)
    norms = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
    scaled = levels * rows.abs() / norms.clamp_min(torch.finfo(u.dtype).tiny)  # a zero bucket quantizes to 0
    low = torch.floor(scaled)
    up = torch.rand(rows.shape, generator=generator, dtype=u.dtype).to(u.device) < scaled - low
    return (norms * torch.sign(rows) * (low + up) / levels).flatten()[:flat.numel()].view_as(u)


def scaled_sign(u: torch.Tensor) -> torch.Tensor:
    return u.abs().mean() * torch.sign(u)


def uniform(u: torch.Tensor, bits: int) -> torch.Tensor:
    step = (u.abs().max() / (2 ** (bits - 1) - 1)).clamp_min(torch.finfo(u.dtype).tiny)  # branch-free (vmap)
    return step * torch.round(u / step)


@defense("quantize")
class Quantization(Client):
    """Quantization of each tensor of the update: ``scheme`` qsgd (``levels``, ``bucket``), sign (scaled signSGD),
    fp16, or uniform (``bits``); the server sees the dequantized tensors."""

    strength = Axis.of("levels", 64, 16, 4, 1)
    parameters = {
        "scheme": Param("qsgd (stochastic, unbiased), sign (scaled signSGD), fp16 or uniform (deterministic)",
                        choices=SCHEMES),
        "levels": Param("qsgd: s, the quantization levels per bucket", at_least=1),
        "bucket": Param("qsgd: consecutive entries that share one norm", at_least=1),
        "bits": Param("uniform: b, the bits per entry (2^(b-1) - 1 levels per side)", at_least=2, at_most=16),
    }

    def __init__(self, protocol, *, scheme: str = "qsgd", levels: int = 16, bucket: int = 512, bits: int = 8):
        super().__init__(protocol)
        self.scheme, self.levels, self.bucket, self.bits = scheme, levels, bucket, bits
        self.public = {"scheme": scheme, "levels": levels, "bucket": bucket, "bits": bits}

    def transform(self, update, generator):
        if self.scheme == "qsgd":
            if generator is None:
                return update  # the attacker's model: E[Q(u)] = u
            return {k: qsgd(v, self.levels, self.bucket, generator) for k, v in update.items()}
        quantize = {"sign": scaled_sign, "fp16": lambda v: v.half().to(v.dtype),
                    "uniform": lambda v: uniform(v, self.bits)}[self.scheme]
        return {k: straight_through(v, quantize(v.detach())) for k, v in update.items()}

    def cost(self):
        tensors, entries = len(self.protocol.params), self.numel()
        norms = sum(buckets(p.numel(), self.bucket) for p in self.protocol.params.values())
        bits = {"qsgd": entries * (1 + math.ceil(math.log2(self.levels + 1))) + 32 * norms,
                "sign": entries + 32 * tensors, "fp16": 16 * entries,
                "uniform": entries * self.bits + 32 * tensors}[self.scheme]
        return {**super().cost(), "bytes": math.ceil(bits / 8)}
