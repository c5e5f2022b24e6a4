"""95 % intervals for the means and shares the tables report, and the paired test that says whether two settings'
leakage can be told apart.

- ``cluster_bootstrap``: the percentile interval of a pooled mean, resampling whole cells (the images of one batch
  are not independent draws), seeded so that a table is reproducible.
- ``clopper_pearson``: the exact binomial interval of a share (``clopper_pearson_upper``: its one-sided upper bound).
- ``paired``: two settings scored on the same private images: the mean difference, its bootstrap interval over the
  pairs and the Wilcoxon signed-rank p-value.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

RESAMPLES = 2000


def cluster_bootstrap(groups: list[np.ndarray], seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of the pooled mean of ``groups`` (one array per cell), resampling whole cells; a
    single cell is resampled image by image; nan where there is one value only."""
    groups = [np.asarray(g, dtype=float) for g in groups if len(g)]
    if len(groups) < 2:
        values = np.concatenate(groups) if groups else np.array([])
        if len(values) < 2:
            return math.nan, math.nan
        groups = [values[i:i + 1] for i in range(len(values))]
    rng = np.random.default_rng(seed)
    sums, counts = np.array([g.sum() for g in groups]), np.array([len(g) for g in groups])
    picks = rng.integers(0, len(groups), size=(RESAMPLES, len(groups)))
    means = sums[picks].sum(1) / counts[picks].sum(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def clopper_pearson(hits: int, n: int) -> tuple[float, float]:
    """The exact 95 % interval of a share of ``hits`` in ``n``."""
    if n == 0:
        return math.nan, math.nan
    lo = stats.beta.ppf(0.025, hits, n - hits + 1) if hits > 0 else 0.0
    hi = stats.beta.ppf(0.975, hits + 1, n - hits) if hits < n else 1.0
    return float(lo), float(hi)


def clopper_pearson_upper(hits: int, n: int, confidence: float) -> float:
    """The exact one-sided upper bound, at ``confidence``, of a rate seen ``hits`` times in ``n`` trials."""
    return float(stats.beta.ppf(confidence, hits + 1, n - hits)) if hits < n else 1.0


def paired(a: np.ndarray, b: np.ndarray, seed: int = 0) -> tuple[float, float, float, float]:
    """(mean of a - b, its 95 % bootstrap interval, Wilcoxon signed-rank p) over pairs of scores of the same
    images; p is 1 where every difference is 0."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    lo, hi = cluster_bootstrap([diff], seed)
    p = 1.0 if not np.any(diff) else float(stats.wilcoxon(diff).pvalue)
    return float(diff.mean()), lo, hi, p
