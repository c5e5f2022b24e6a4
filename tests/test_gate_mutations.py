"""The regression gate catches real regressions: each mutation below, applied to the code, makes the gate fail on the
committed smoke baseline. The same settings pass unmutated: ``make test`` ends with the gate over the whole smoke
suite on the unmodified code, so they are not run a second time here."""

import functools
from importlib import resources

import pytest
import torch

from giabench import runner, suite
from giabench.attacks import fedavg_invert, fedleak, fishing, gradinversion
from giabench.attacks.analytic import RobbingTheFed
from giabench.attacks.cpa import CocktailParty
from giabench.attacks.dager import Dager
from giabench.attacks.optimization import InvertingGradients
from giabench.attacks.spear import Spear
from giabench.attacks.text_optimization import TAG
from giabench.defenses import dp_sgd, quantization
from giabench.defenses.dgc import DeepGradientCompression
from giabench.leaderboard import regress, tables

SMOKE = suite.load("smoke")
BASELINE = regress.read_baseline(resources.files("giabench.leaderboard") / "baselines" / "smoke.csv")


def _gate(tmp_path, keep) -> tuple[list[str], list[str]]:
    """Run the smoke cells that ``keep`` selects and judge them against their baseline settings."""
    cells = [c for c in SMOKE.cells if keep(c.config)]
    assert cells
    runner.run_suite(suite.Suite("mutation", "", cells, "smoke"), tmp_path, runner.Environment(),
                     show_progress=False)
    return regress.compare(regress.summarize(tables.cells(tmp_path)), BASELINE, partial=True)


def _ig_undefended(c):
    return (c["attack"]["name"] == "ig" and c["defense"]["name"] == "none" and c["protocol"]["name"] == "fedsgd"
            and c["model"]["name"] == "mlp")


def _rtf(c):
    return c["attack"]["name"] == "rtf"


def _undefended(name):
    return lambda c: c["attack"]["name"] == name and c["defense"]["name"] == "none"


def _dp_sgd(c):
    return c["defense"]["name"] == "dp-sgd"


def _sign_quantized(c):
    return c["defense"]["name"] == "quantize" and c["defense"].get("scheme") == "sign"


def test_gate_fails_when_ig_learning_rate_drops_tenfold(tmp_path, monkeypatch):
    original = InvertingGradients.__init__

    @functools.wraps(original)
    def slower(self, **params):
        original(self, **params)
        self.lr *= 0.1

    monkeypatch.setattr(InvertingGradients, "__init__", slower)
    failures, _ = _gate(tmp_path, _ig_undefended)
    assert any(line.startswith("weaker: ig") and "psnr" in line for line in failures), failures


def test_gate_fails_when_rtf_cutoffs_shift_by_one_standard_deviation(tmp_path, monkeypatch):
    original = RobbingTheFed.bin_edges

    def shifted(self, values):
        cutoffs, widths = original(self, values)
        return cutoffs + values.std(), widths

    monkeypatch.setattr(RobbingTheFed, "bin_edges", shifted)
    failures, _ = _gate(tmp_path, _rtf)
    assert any(line.startswith(("weaker: rtf", "changed: rtf")) and "exact" in line for line in failures), failures


def _weakened(monkeypatch, cls, **changes):
    original = cls.__init__

    @functools.wraps(original)
    def weaker(self, **params):
        original(self, **params)
        for name, value in changes.items():
            setattr(self, name, value)

    monkeypatch.setattr(cls, "__init__", weaker)


def test_gate_fails_when_spear_filters_its_proposals_too_strictly(tmp_path, monkeypatch):
    _weakened(monkeypatch, Spear, tau=0.9)  # keeps only directions with 90 % of the way to all-zero: none
    failures, _ = _gate(tmp_path, _undefended("spear"))
    assert any(line.startswith(("weaker: spear", "changed: spear")) and "exact" in line for line in failures), failures


def test_gate_fails_when_cpa_loses_its_total_variation_prior(tmp_path, monkeypatch):
    _weakened(monkeypatch, CocktailParty, tv=0.0)
    failures, _ = _gate(tmp_path, _undefended("cpa"))
    assert any(line.startswith("weaker: cpa") and "psnr" in line for line in failures), failures


def test_gate_fails_when_gradinversion_loses_its_batch_norm_prior(tmp_path, monkeypatch):
    monkeypatch.setattr(gradinversion, "bn_distance", lambda stats, targets: torch.zeros(()))
    failures, _ = _gate(tmp_path, _undefended("gradinversion"))
    assert any(line.startswith("weaker: gradinversion") and "psnr" in line for line in failures), failures


def test_gate_fails_when_fedavg_invert_wires_every_epoch_to_its_first_copy(tmp_path, monkeypatch):
    monkeypatch.setattr(fedavg_invert, "epoch_orders", lambda epochs, n: [torch.arange(n)] * epochs)
    failures, _ = _gate(tmp_path, _undefended("fedavg-invert"))
    assert any(line.startswith("weaker: fedavg-invert") and "psnr" in line for line in failures), failures


def test_gate_fails_when_class_fishing_keeps_the_other_classes_rows(tmp_path, monkeypatch):
    def leaky(head, target, gap):  # the other classes keep their weights: every image reaches the body
        with torch.no_grad():
            bias = head.bias[target].clone()
            head.bias.fill_(gap)
            head.bias[target] = bias

    monkeypatch.setattr(fishing, "class_head", leaky)
    failures, _ = _gate(tmp_path, lambda c: c["attack"]["name"] == "fishing" and c["attack"].get("mode") == "class")
    assert any(line.startswith("weaker: fishing") and "psnr" in line for line in failures), failures


def test_gate_fails_when_dager_drops_its_second_layer_check(tmp_path, monkeypatch):
    monkeypatch.setattr(Dager, "_layer2", lambda self, net, sequences, basis, last=False: torch.zeros(
        sequences.shape[:1] if last else sequences.shape, dtype=torch.float64))
    failures, _ = _gate(tmp_path, lambda c: c["attack"]["name"] == "dager" and c["defense"]["name"] == "none"
                        and c["model"]["name"] == "gpt2")
    assert any(line.startswith("weaker: dager") and "rouge1" in line for line in failures), failures


def test_gate_fails_when_dager_reads_a_pruned_gradient_without_completing_it(tmp_path, monkeypatch):
    _weakened(monkeypatch, Dager, impute=0)  # the non-adaptive attacker
    failures, _ = _gate(tmp_path, lambda c: c["attack"]["name"] == "dager" and c["defense"]["name"] == "prune")
    assert any(line.startswith("weaker: dager") and "rouge1" in line for line in failures), failures


def test_gate_fails_when_tag_steps_a_hundred_times_shorter(tmp_path, monkeypatch):
    _weakened(monkeypatch, TAG, lr=0.001)  # the smoke cells' lr is TAG's default 0.1
    failures, _ = _gate(tmp_path, _undefended("tag"))
    assert any(line.startswith("weaker: tag") and "rouge1" in line for line in failures), failures


def test_gate_fails_naming_dp_sgd_when_its_noise_is_dropped(tmp_path, monkeypatch):
    monkeypatch.setattr(dp_sgd, "gaussian_release", lambda value, std, sensitivity, generator: value)
    failures, _ = _gate(tmp_path, _dp_sgd)
    leaks = [line for line in failures if line.startswith("privacy regression: defense dp-sgd leaks more")]
    assert leaks == failures
    psnr = [line for line in leaks if ": psnr " in line]
    # without noise DP-SGD is per-sample clipping only: IG and iDLG gain, and SPEAR disaggregates the clipped batch
    assert sorted(line.split("leaks more: ")[1].split(" ")[0] for line in psnr) == ["idlg", "ig", "spear"], failures


def test_gate_fails_naming_quantize_when_it_sends_the_update_unquantized(tmp_path, monkeypatch):
    monkeypatch.setattr(quantization, "scaled_sign", lambda u: u)  # the bytes still read 1 bit per entry
    failures, _ = _gate(tmp_path, _sign_quantized)
    assert failures and all(line.startswith("privacy regression: defense quantize leaks more") for line in failures)
    assert any(": psnr " in line for line in failures), failures


def test_gate_fails_when_the_dgc_attacker_forgets_the_residuals_of_earlier_rounds(tmp_path, monkeypatch):
    """The attacker models DGC as one round of top-k (the last round's mask on g(x_hat)), not the replayed
    accumulation that makes each sent entry a known multiple of g: the reconstruction falls from ~39 dB to ~14 dB."""
    original = DeepGradientCompression.transform

    def one_round(self, update, generator):
        if generator is not None:
            return original(self, update, generator)
        last = self.public["masks"][-1]
        return {k: v * last[k] for k, v in update.items()}

    monkeypatch.setattr(DeepGradientCompression, "transform", one_round)
    failures, _ = _gate(tmp_path, lambda c: c["defense"]["name"] == "dgc")
    assert any(line.startswith("weaker: ig") and "dgc" in line and "psnr" in line for line in failures), failures


def test_gate_fails_when_fedleak_matches_the_smallest_entries_instead_of_the_largest(tmp_path, monkeypatch):
    """FedLeak's partial matching keeps the largest half of each layer's entries; matching the smallest half instead
    drops the smoke setting from ~28 dB to ~9 dB."""
    monkeypatch.setattr(fedleak, "partial_distance", _smallest_half)
    failures, _ = _gate(tmp_path, lambda c: c["attack"]["name"] == "fedleak")
    assert any(line.startswith("weaker: fedleak") and "psnr" in line for line in failures), failures


def _smallest_half(sim, obs, keep):
    """FedLeak's distance on the ``keep`` share of entries of *smallest* magnitude."""
    total = 0.0
    for key, target in obs.items():
        s, o = sim[key].flatten(), target.flatten()
        mask = (s.detach().abs() <= s.detach().abs().kthvalue(max(1, int(keep * s.numel()))).values).to(s.dtype)
        total = total + (mask * (s - o)).abs().mean() + 1 - torch.nn.functional.cosine_similarity(
            mask * s, mask * o, dim=0, eps=1e-8)
    return total


@pytest.mark.parametrize("metric", ["psnr", "ssim"])
def test_a_defended_setting_that_leaks_more_fails_and_an_undefended_one_is_a_note(metric):
    defended = BASELINE[(BASELINE["defense"] == "dp-sgd") & (BASELINE["attack"] == "ig")]
    undefended = BASELINE[(BASELINE["defense"] == "none") & (BASELINE["attack"] == "ig")].head(1)
    for frame, expect_failure in ((defended, True), (undefended, False)):
        leakier = frame.assign(**{f"{metric}_mean": frame[f"{metric}_mean"] + 2 * frame[f"{metric}_tol"] + 1e-3})
        failures, notes = regress.compare(leakier, frame)
        assert bool(failures) == expect_failure and bool(notes) != expect_failure
