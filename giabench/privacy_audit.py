"""The privacy audit of a DP mechanism: does it add the noise its accountant counts, and how much epsilon can a test
that tells neighbouring datasets apart demonstrate?

The audit knows a defense only through its contract: ``share`` on neighbouring batches (one record added, or one
replaced, as the defense's ``adjacency`` says), the releases its accountant composed (``releases``: noise multiplier,
sample rate and count), and the Gaussian releases it makes through ``giabench.privacy.gaussian_release`` (or reports
with ``observe_release``): the value before noise, the released value and the sensitivity S the accountant assumes.

- Count: one message makes exactly as many Gaussian releases as its accountant composed.
- Sensitivity: on noise-free runs of the two neighbours along the same random path, ||v(D') - v(D)|| <= S per release
  (2 S under replace-one), for the canary, among ``CANDIDATES`` records (a mislabelled image has a large gradient,
  so clipping is exercised), that moves the first release most. A later local step also sees the canary's influence
  on the weights through the earlier steps, hence ``SENSITIVITY_SLACK``.
- Calibration: over ``draws`` messages with fresh generators, the noise actually added (released - value) has
  variance (z S)^2 per entry, along the neighbours' difference and along random directions. With known mean 0 and
  nu samples, nu s^2 / sigma^2 ~ chi^2(nu); the check passes when the two-sided 1 - ``ALPHA`` interval of
  s^2 / (z S)^2 holds 1 (Jagielski et al., NeurIPS 2020, audit the noise the same way, before any attack).
- Lower bound (Jagielski, Ullman, Oprea, NeurIPS 2020; Nasr et al., IEEE S&P 2021): the first release of each
  neighbour is drawn ``lower_draws`` times; the statistic is its projection on the neighbours' noise-free
  difference. A threshold chosen on the first half, its false-positive and false-negative rates on the second half
  with one-sided Clopper-Pearson upper bounds at 95 % each, give
      epsilon_lower = max(ln((1 - delta - FNR) / FPR), ln((1 - delta - FPR) / FNR)),
  which must not exceed the epsilon the accountant claims for that one release.
The batch size (public in every cell: the server view carries it) is taken as public, so a division by it after the
release is post-processing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import stats

from giabench import data, runner
from giabench.contracts import Client, is_private
from giabench.intervals import clopper_pearson_upper
from giabench.privacy import Observed, observing, rdp_epsilon
from giabench.suite import Cell

ALPHA = 1e-4  # two-sided miss rate of each calibration interval
RANDOM_DIRECTIONS = 3
CANDIDATES = 8  # canary records tried (images outside the batch, labelled and mislabelled); the one that moves the
#                first release most is audited
SENSITIVITY_SLACK = 0.02
CONFIDENCE = 0.95  # of each Clopper-Pearson bound in the lower bound


@dataclass
class Check:
    """One line of an audit: what was checked at which release, expected against measured, with its interval."""

    release: int
    what: str
    expected: float
    measured: float
    low: float
    high: float
    passed: bool


@dataclass
class Audit:
    """The audit of one defense setting."""

    setting: str
    adjacency: str
    delta: float
    claimed: float  # the defense's cost: epsilon over every release and round it declares
    release_claim: float  # epsilon the accountant gives the first release alone
    draws: int
    checks: list[Check] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    lower: float | None = None  # the empirical lower bound on the first release's epsilon
    lower_draws: int = 0

    @property
    def passed(self) -> bool:
        return not self.failures


def _flat(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.double().flatten() for t in tensors.values()])


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def neighbours(x: torch.Tensor, y: torch.Tensor, canary: tuple[torch.Tensor, torch.Tensor], adjacency: str):
    """(D, D'): the batch and the batch with the canary appended (add-remove) or put in place of the last record
    (replace-one)."""
    cx, cy = canary
    if adjacency == "replace-one":
        return (x, y), (torch.cat([x[:-1], cx]), torch.cat([y[:-1], cy]))
    return (x, y), (torch.cat([x, cx]), torch.cat([y, cy]))


def releases_of(make_client: Callable[[], Client], batch, seed: int, noiseless: bool = False
                ) -> tuple[list[Observed], list[tuple[float, float]], Client]:
    """One message on ``batch``: the releases observed and the (z, q) of each release its accountant counted."""
    client = make_client()
    with observing(noiseless) as observed:
        client.share(*batch, _generator(seed))
    counted = [(z, q) for z, q, steps in client.releases for _ in range(steps)]
    return observed, counted, client


def _variance_check(release: int, what: str, nu: int, mean_square: float, expected_std: float) -> Check:
    """s^2 = mean of the nu squared samples (mean 0 known) against expected_std^2, by the chi-square interval of the
    ratio."""
    ratio = mean_square / expected_std ** 2
    low = nu * ratio / stats.chi2.ppf(1 - ALPHA / 2, nu)
    high = nu * ratio / stats.chi2.ppf(ALPHA / 2, nu)
    return Check(release, what, expected_std, math.sqrt(ratio) * expected_std, math.sqrt(low) * expected_std,
                 math.sqrt(high) * expected_std, low <= 1 <= high)


def _directions(differences: list[torch.Tensor], seed: int) -> list[list[tuple[str, torch.Tensor]]]:
    """Per release: the unit neighbours' difference (when the canary moved it) and random unit directions."""
    gen = _generator(seed + 7)
    out = []
    for diff in differences:
        chosen = [("along the neighbours' difference", diff / diff.norm())] if diff.norm() > 0 else []
        for k in range(RANDOM_DIRECTIONS):
            v = torch.randn(diff.shape, generator=gen, dtype=torch.float64)
            chosen.append((f"along random direction {k + 1}", v / v.norm()))
        out.append(chosen)
    return out


def lower_bound(scores_d: np.ndarray, scores_d2: np.ndarray, delta: float) -> float:
    """epsilon_lower from the scores of D and D' (see the module docstring): threshold on the first halves, rates
    on the second halves, each rate's one-sided Clopper-Pearson upper bound."""
    half_d, half_d2 = len(scores_d) // 2, len(scores_d2) // 2
    pick_d, test_d = scores_d[:half_d], scores_d[half_d:]
    pick_d2, test_d2 = scores_d2[:half_d2], scores_d2[half_d2:]
    if np.mean(pick_d2) < np.mean(pick_d):  # D' scores high
        pick_d, pick_d2, test_d, test_d2 = -pick_d, -pick_d2, -test_d, -test_d2
    best_t, best = None, -math.inf
    for t in np.unique(np.concatenate([pick_d, pick_d2])):
        fpr = clopper_pearson_upper(int(np.sum(pick_d >= t)), len(pick_d), CONFIDENCE)
        fnr = clopper_pearson_upper(int(np.sum(pick_d2 < t)), len(pick_d2), CONFIDENCE)
        value = _epsilon_from_rates(fpr, fnr, delta)
        if value > best:
            best_t, best = t, value
    if best_t is None:
        return 0.0
    fpr = clopper_pearson_upper(int(np.sum(test_d >= best_t)), len(test_d), CONFIDENCE)
    fnr = clopper_pearson_upper(int(np.sum(test_d2 < best_t)), len(test_d2), CONFIDENCE)
    return max(0.0, _epsilon_from_rates(fpr, fnr, delta))


def _epsilon_from_rates(fpr: float, fnr: float, delta: float) -> float:
    """The epsilon a test with these error rates demonstrates at delta (-inf where it demonstrates none)."""
    values = [math.log((1 - delta - a) / b) for a, b in ((fnr, fpr), (fpr, fnr)) if b > 0 and 1 - delta - a > 0]
    return max(values, default=-math.inf)


def audit(setting: str, make_client: Callable[[], Client], x: torch.Tensor, y: torch.Tensor,
          candidates: list[tuple[torch.Tensor, torch.Tensor]], draws: int = 200, lower_draws: int = 0,
          seed: int = 0) -> Audit:
    """Audit the mechanism ``make_client`` builds on the batch (x, y), with canaries from ``candidates``; see the
    module docstring. ``lower_draws`` 0 skips the lower bound. Where adding a record changes how many releases a
    message makes (FedAvg minibatches), the neighbours are replace-one pairs, the bound 2 S and the claim the
    replace-one epsilon of the same noise (a sensitivity S to one record added implies 2 S to one replaced)."""
    cost = make_client().cost()
    report = Audit(setting, cost["adjacency"], cost["delta"], math.nan, math.nan, draws)
    pair = report.adjacency
    observed, counted, client = releases_of(make_client, neighbours(x, y, candidates[0], pair)[1], seed)
    report.claimed = float(client.cost()["epsilon"])
    if not math.isfinite(report.claimed) or not counted and not observed:
        return report  # no finite claim, or nothing released, to check
    if len(observed) != len(counted):
        report.failures.append(f"{setting}: its accountant counts {len(counted)} Gaussian releases per message, "
                               f"{len(observed)} noise draws were observed")
        return report
    pairs = _noiseless_pairs(make_client, x, y, candidates, pair, seed)
    if any(len(small) != len(large) for small, large in pairs) and pair == "add-remove":
        pair = "replace-one"
        counted = releases_of(make_client, neighbours(x, y, candidates[0], pair)[1], seed)[1]
        pairs = _noiseless_pairs(make_client, x, y, candidates, pair, seed)
    best = max(range(len(pairs)), key=lambda k: _moved(*pairs[k], 0))
    (small, large), canary = pairs[best], candidates[best]
    if len(small) != len(counted) or len(large) != len(counted):
        report.failures.append(f"{setting}: noise-free runs made {len(small)} and {len(large)} releases where the "
                               f"accountant counts {len(counted)}")
        return report
    report.release_claim = rdp_epsilon([(counted[0][0], counted[0][1], 1)], report.delta, pair)
    factor = 2.0 if pair == "replace-one" else 1.0
    differences = [_flat(b.value) - _flat(a.value) for a, b in zip(small, large, strict=True)]
    for i, (a, b) in enumerate(zip(small, large, strict=True)):
        bound, moved = factor * max(a.sensitivity, b.sensitivity), float(differences[i].norm())
        what = "sensitivity" if pair == report.adjacency else "sensitivity (replace-one neighbours, bound 2 S)"
        report.checks.append(Check(i, what, bound, moved, 0.0, bound * (1 + SENSITIVITY_SLACK),
                                   moved <= bound * (1 + SENSITIVITY_SLACK) + 1e-12))
    d2 = neighbours(x, y, canary, pair)[1]
    report.checks += _calibration(make_client, d2, counted, large, _directions(differences, seed), draws, seed)
    report.failures += [f"{setting}: release {c.release} of {len(counted)}: {c.what} {c.measured:.4g}, the "
                        f"accountant's is {c.expected:.4g} (interval [{c.low:.4g}, {c.high:.4g}])"
                        for c in report.checks if not c.passed]
    if lower_draws:
        report.lower, report.lower_draws = _lower(make_client, x, y, canary, pair, differences[0], report.delta,
                                                  lower_draws, seed), lower_draws
        if report.lower > report.release_claim:
            report.failures.append(f"{setting}: a test tells the neighbours apart at epsilon >= {report.lower:.3g} "
                                   f"({lower_draws} draws each), above the {report.release_claim:.3g} the "
                                   "accountant claims for that release")
    return report


def _noiseless_pairs(make_client, x, y, candidates, adjacency, seed) -> list[tuple[list, list]]:
    """Per candidate canary: the noise-free releases of D and D' along the same random path."""
    pairs = []
    for canary in candidates[:CANDIDATES]:
        d, d2 = neighbours(x, y, canary, adjacency)
        pairs.append((releases_of(make_client, d, seed, True)[0], releases_of(make_client, d2, seed, True)[0]))
    return pairs


def _moved(small: list[Observed], large: list[Observed], i: int) -> float:
    """How far the canary moves release i (-1 where a run made no such release)."""
    if len(small) <= i or len(large) <= i:
        return -1.0
    return float((_flat(large[i].value) - _flat(small[i].value)).norm())


def _calibration(make_client, batch, counted, reference: list[Observed], directions, draws: int,
                 seed: int) -> list[Check]:
    """The variance checks of every release's noise over ``draws`` messages on ``batch``, accumulated draw by draw
    (a sum of squares per release and one projection per direction), so memory stays one message's size."""
    squares, entries = [0.0] * len(counted), [0] * len(counted)
    projections = [[[] for _ in directions[i]] for i in range(len(counted))]
    for j in range(draws):
        for i, release in enumerate(releases_of(make_client, batch, seed + 1000 + j)[0]):
            noise = _flat(release.released) - _flat(release.value)
            squares[i] += float((noise ** 2).sum())
            entries[i] += noise.numel()
            for k, (_, direction) in enumerate(directions[i]):
                projections[i][k].append(float(noise @ direction))
    checks = []
    for i, ((z, _), release) in enumerate(zip(counted, reference, strict=True)):
        expected = z * release.sensitivity
        checks.append(_variance_check(i, "noise std per entry", entries[i], squares[i] / max(entries[i], 1), expected))
        checks += [_variance_check(i, f"noise std {what}", len(values), float(np.mean(np.square(values))), expected)
                   for (what, _), values in zip(directions[i], projections[i], strict=True)]
    return checks


def _lower(make_client, x, y, canary, adjacency, difference, delta, draws, seed) -> float:
    """The lower bound on the first release (see ``lower_bound``), its statistic the projection on the
    neighbours' noise-free difference."""
    unit = difference / difference.norm() if difference.norm() > 0 else difference
    scores = []
    for offset, batch in enumerate(neighbours(x, y, canary, adjacency)):
        values = []
        for j in range(draws):
            taken, _, _ = releases_of(make_client, batch, seed + 10 ** 6 * (offset + 1) + j)
            values.append(float(_flat(taken[0].released) @ unit))
        scores.append(np.array(values))
    return lower_bound(scores[0], scores[1], delta)


def setting_label(cell: Cell) -> str:
    d = cell.defense
    params = ", ".join(f"{k}={v}" for k, v in sorted(d.params.items()))
    return (f"defense {d.name} ({params}) on {cell.model.name}/{cell.dataset.name}, {cell.protocol.name}, "
            f"B={cell.batch_size}")


def dp_cells(cells: list[Cell], env: runner.Environment | None = None) -> list[Cell]:
    """One cell per DP defense setting (the first seed of each), in suite order: those whose client's cost states
    an adjacency (``giabench.contracts.is_private``)."""
    chosen, seen = [], set()
    for cell in cells:
        key = setting_label(cell)
        if key in seen:
            continue
        seen.add(key)
        if is_private(_build(cell, env or runner.Environment())[2]().cost()):
            chosen.append(cell)
    return chosen


def _build(cell: Cell, env: runner.Environment):
    """(images, the batch's index, a factory of fresh clients of the cell's defense on its model and protocol)."""
    imageset = runner.load_dataset(cell.dataset, env)
    index = data.sample_index(imageset, cell.batch_size, cell.seed, cell.selection)
    protocol = cell.protocol.build(runner.build_model(cell.model, imageset, cell.seed))
    return imageset, index, lambda: cell.defense.build(protocol)


def audit_cell(cell: Cell, env: runner.Environment | None = None, draws: int = 200, lower_draws: int = 0) -> Audit:
    """Audit the defense of ``cell`` on its batch, model and protocol, canaries drawn from images outside the
    batch."""
    imageset, index, make_client = _build(cell, env or runner.Environment())
    rest = torch.ones(len(imageset), dtype=torch.bool)
    rest[index] = False
    outside = torch.nonzero(rest).flatten()
    pick = outside[torch.randperm(len(outside), generator=_generator(cell.seed))[:CANDIDATES // 2]]
    candidates = [(imageset.images[i:i + 1], (imageset.labels[i:i + 1] + shift) % imageset.num_classes)
                  for i in pick.tolist() for shift in (0, 1)]  # each image with its label and mislabelled
    return audit(setting_label(cell), make_client, imageset.images[index], imageset.labels[index], candidates, draws,
                 lower_draws, cell.seed)


SUMMARY_COLUMNS = ["setting", "adjacency", "delta", "epsilon_claimed", "epsilon_release", "epsilon_lower",
                   "lower_draws", "draws", "checks", "checks_passed", "passed", "failures"]
CHECK_COLUMNS = ["setting", "release", "what", "expected", "measured", "low", "high", "passed"]


def summary_rows(audits: list[Audit]) -> list[dict]:
    """One row per audited setting: the claims, the lower bound with its draws, how many checks passed."""
    return [{"setting": a.setting, "adjacency": a.adjacency, "delta": a.delta, "epsilon_claimed": a.claimed,
             "epsilon_release": a.release_claim, "epsilon_lower": a.lower if a.lower is not None else math.nan,
             "lower_draws": a.lower_draws, "draws": a.draws, "checks": len(a.checks),
             "checks_passed": sum(c.passed for c in a.checks), "passed": a.passed, "failures": " | ".join(a.failures)}
            for a in audits]


def check_rows(audits: list[Audit]) -> list[dict]:
    return [{"setting": a.setting, "release": c.release, "what": c.what, "expected": c.expected,
             "measured": c.measured, "low": c.low, "high": c.high, "passed": c.passed}
            for a in audits for c in a.checks]
