"""Reconstruction quality for token sequences, after matching reconstructions to private sequences.

ROUGE-N as Google's ``rouge_score`` computes it (what LAMP's and DAGER's evaluation runs, without stemming): both texts
lower-cased, every run of characters other than [a-z0-9] made a space, split on spaces; with C_r, C_p the n-gram
counts of reference and prediction,
    overlap = sum_g min(C_r[g], C_p[g]),  P = overlap / max(|pred n-grams|, 1),  R = overlap / max(|ref n-grams|, 1),
    F = 2 P R / (P + R)  (0 when P + R = 0),
reported x 100 as the papers do. Reconstructions are matched to private sequences by the optimal assignment on
1 - ROUGE-1 F (LAMP's evaluation; scipy ``linear_sum_assignment``); a slot an attack did not fill (``recovered``
False) is matched like any other and scores what it holds. Per sequence also the token accuracy, the share of
positions whose token id is right, and whether the sequence is recovered exactly (every id right).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from giabench.metrics import label_accuracy, label_set_accuracy

NON_WORD = re.compile(r"[^a-z0-9]+")
LEAK_ROUGE1 = 50.0  # a sequence counts as leaked when its ROUGE-1 F reaches this (half its words, in the audit)
TEXT_METRICS = ("rouge1", "rouge2", "token_acc")
IMAGE_METRICS = ("mse", "psnr", "ssim", "lpips")


def rouge_tokens(text: str) -> list[str]:
    return NON_WORD.sub(" ", text.lower()).split()


def rouge(prediction: str, reference: str, n: int) -> float:
    """ROUGE-N F-measure x 100 of one prediction against one reference."""
    grams = [Counter(zip(*(t[i:] for i in range(n)), strict=False)) for t in map(rouge_tokens, (prediction, reference))]
    predicted, referenced = grams
    overlap = sum((predicted & referenced).values())
    precision = overlap / max(sum(predicted.values()), 1)
    recall = overlap / max(sum(referenced.values()), 1)
    return 0.0 if precision + recall == 0 else 100 * 2 * precision * recall / (precision + recall)


def score(recon: torch.Tensor | None, labels: torch.Tensor | None, x: torch.Tensor, y: torch.Tensor,
          texts: Callable[[torch.Tensor], list[str]]) -> tuple[dict, list[dict], np.ndarray]:
    """Summary scores, one row per private sequence (with both texts) and the matching order; ``texts`` decodes
    token ids. Label-only attacks: ``recon`` None."""
    x = x.detach().cpu()
    truth = texts(x)
    nan_image = dict.fromkeys(IMAGE_METRICS, math.nan)
    if recon is None:
        order = np.arange(len(x))
        rows = [{"image": j, "matched": None, "label": int(y[j]), "label_pred": None, **nan_image,
                 **dict.fromkeys(TEXT_METRICS, math.nan), "text": truth[j], "text_pred": None} for j in range(len(x))]
    else:
        recon = recon.detach().cpu().long()
        guesses = texts(recon)
        cost = np.array([[100 - rouge(g, t, 1) for t in truth] for g in guesses])
        slots, targets = linear_sum_assignment(cost)
        order = np.empty(len(x), dtype=int)
        order[targets] = slots
        rows = []
        for j in range(len(x)):
            guess = guesses[order[j]]
            rows.append({"image": j, "matched": int(order[j]), "label": int(y[j]),
                         "label_pred": int(labels[order[j]]) if labels is not None else None, **nan_image,
                         "rouge1": rouge(guess, truth[j], 1), "rouge2": rouge(guess, truth[j], 2),
                         "token_acc": float((recon[order[j]] == x[j]).float().mean()),
                         "text": truth[j], "text_pred": guess})
    summary = {key: float(np.mean([r[key] for r in rows])) for key in (*IMAGE_METRICS, *TEXT_METRICS)}
    summary["exact"] = sum(r["token_acc"] == 1.0 for r in rows) if recon is not None else None
    summary["label_acc"] = label_accuracy(labels, y.cpu())
    summary["label_set_acc"] = label_set_accuracy(labels, y.cpu())
    summary["lpips_source"] = "text"
    return summary, rows, order
