"""Reconstruction quality, after matching reconstructions to private images.

Batch order is not recoverable from a summed gradient, so reconstructions are first assigned to private images. When
every slot is an attempt (optimization and generative attacks), by the optimal assignment (Hungarian algorithm, scipy
``linear_sum_assignment``) on pairwise MSE. When an attack recovers only some slots (``recovered``, e.g. Robbing the
Fed's occupied bins), each recovered image goes to its best (lowest-MSE) target, the best one wins where several pick
the same target, and the targets left over get the remaining slots by the optimal assignment: an unfilled slot never
pushes an exact reconstruction off its target. Then per image:
    MSE = mean (x_hat - x)^2,   PSNR = min(10 log10(1 / MSE), 80 dB)  (pixels in [0, 1]),
SSIM (Wang et al., 2004) as scikit-image computes it (7x7 uniform window, data range 1), LPIPS-alex v0.1 (see
``giabench.lpips``), label accuracy as the size of the multiset intersection of true and recovered labels over B, and
the count of exactly recovered images (PSNR above 40 dB). PSNR is capped at 80 dB (MSE 1e-8): a float32-exact
reconstruction lands anywhere between 120 dB and infinity depending on rounding, digits that would otherwise dominate
every mean they enter.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from skimage.metrics import structural_similarity

from giabench import lpips

EXACT_DB = 40.0  # a reconstruction above this PSNR counts as exactly recovered (Robbing the Fed's criterion)
LEAK_DB = 25.0  # a reconstruction above this PSNR counts as a recognizable leak (the audit and the summary)
PSNR_CEILING = 80.0  # dB; beyond it the difference between two images is float rounding


def psnr(mse: float) -> float:
    return PSNR_CEILING if mse <= 10 ** (-PSNR_CEILING / 10) else 10 * math.log10(1.0 / mse)


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """SSIM of two C x H x W images in [0, 1]."""
    side = min(a.shape[-2:])
    win = min(7, side if side % 2 else side - 1)
    return float(structural_similarity(a.numpy(), b.numpy(), data_range=1.0, channel_axis=0, win_size=win))


def match(recon: torch.Tensor, truth: torch.Tensor, recovered: torch.Tensor | None = None) -> np.ndarray:
    """``order[j]`` is the reconstruction assigned to private image j: recovered slots to their best targets first,
    then minimum total MSE over what is left (all of it when ``recovered`` is None)."""
    cost = ((recon[:, None] - truth[None]) ** 2).flatten(2).mean(-1).numpy()
    order = np.full(len(truth), -1)
    for slot in np.flatnonzero(recovered.cpu().numpy()) if recovered is not None else []:
        target = int(cost[slot].argmin())
        if order[target] < 0 or cost[slot, target] < cost[order[target], target]:
            order[target] = slot
    free_targets = np.flatnonzero(order < 0)
    free_slots = np.setdiff1d(np.arange(len(recon)), order[order >= 0])
    rows, cols = linear_sum_assignment(cost[np.ix_(free_slots, free_targets)])
    order[free_targets[cols]] = free_slots[rows]
    return order


def label_accuracy(pred: torch.Tensor | None, truth: torch.Tensor) -> float:
    """Label-count accuracy: |multiset(pred) & multiset(truth)| / B."""
    if pred is None:
        return math.nan
    common = Counter(pred.tolist()) & Counter(truth.tolist())
    return sum(common.values()) / len(truth)


def label_set_accuracy(pred: torch.Tensor | None, truth: torch.Tensor) -> float:
    """Label-set (existence) accuracy: |set(pred) & set(truth)| / |set(pred) | set(truth)|."""
    if pred is None:
        return math.nan
    p, t = set(pred.tolist()), set(truth.tolist())
    return len(p & t) / len(p | t)


def score(recon: torch.Tensor | None, labels: torch.Tensor | None, x: torch.Tensor, y: torch.Tensor,
          with_lpips: bool = True, recovered: torch.Tensor | None = None) -> tuple[dict, list[dict], np.ndarray]:
    """Summary scores, one row per private image, and the matching order (label-only attacks: ``recon`` None;
    ``recovered``: the mask of slots the attack filled, None when it attempted every slot)."""
    x = x.detach().float().cpu()
    if recon is None:
        order = np.arange(len(x))
        rows = [{"image": j, "matched": None, "label": int(y[j]), "label_pred": None, "mse": math.nan,
                 "psnr": math.nan, "ssim": math.nan, "lpips": math.nan} for j in range(len(x))]
        source = "no images"
    else:
        recon = recon.detach().float().cpu().clamp(0, 1)
        order = match(recon, x, recovered)
        matched = recon[order]
        net, source = lpips.load() if with_lpips else (None, "not computed")
        if net is not None:
            with torch.no_grad():
                distances = net(matched, x).tolist()
        else:
            distances = [math.nan] * len(x)
        rows = []
        for j in range(len(x)):
            mse = float(((matched[j] - x[j]) ** 2).mean())
            rows.append({"image": j, "matched": int(order[j]), "label": int(y[j]),
                         "label_pred": int(labels[order[j]]) if labels is not None else None,
                         "mse": mse, "psnr": psnr(mse), "ssim": ssim(matched[j], x[j]), "lpips": distances[j]})
    summary = {key: float(np.mean([r[key] for r in rows])) for key in ("mse", "psnr", "ssim", "lpips")}
    summary["exact"] = sum(r["psnr"] > EXACT_DB for r in rows) if recon is not None else None
    summary["label_acc"] = label_accuracy(labels, y.cpu())
    summary["label_set_acc"] = label_set_accuracy(labels, y.cpu())
    summary["lpips_source"] = source
    return summary, rows, order
