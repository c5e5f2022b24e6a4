"""The privacy audit: every DP defense setting of the smoke suite adds the noise its accountant counts, and a
mechanism that draws less on any one noise path, claims a smaller sensitivity than its neighbours show, or releases
without noise while claiming an epsilon, is caught by the audit alone."""

import math

import pytest
import torch
import yaml

from giabench import data, models, privacy, privacy_audit, protocols, suite
from giabench.contracts import Client
from giabench.defenses import diff2, dp_sgd, sketching

SMOKE = privacy_audit.dp_cells(suite.load("smoke").cells)


def _cells(text: str):
    return privacy_audit.dp_cells(suite.expand(yaml.safe_load(text)).cells)


MORE = _cells("""
name: more
defaults: {dataset: mnist-sample, model: {name: mlp, width: 16}, protocol: fedsgd, batch_size: 2,
           attack: {name: ig, iterations: 1}}
grid:
  - defense:
      - {name: dp-sgd, noise_multiplier: 0.7, adjacency: replace-one}
      - {name: dp-sgd, noise_multiplier: 1.0, sample_rate: 0.5}
      - {name: sketch, kind: countsketch, ratio: 0.2, noise: pre, noise_multiplier: 1.0}
      - {name: diff2, rounds: 2, view: difference, noise2: 0.5}
  - protocol: {name: fedavg, epochs: 2, batch_size: 1, lr: 0.05}
    defense: {name: dp-sgd, noise_multiplier: 1.0}
""")


def test_the_smoke_suite_s_dp_settings_are_the_ones_audited():
    assert {c.defense.name for c in SMOKE} == {"dp-sgd", "sketch", "diff2"}
    assert all(c.defense.name != "sketch" or c.defense.params["noise"] == "post" for c in SMOKE)


@pytest.mark.parametrize("cell", SMOKE + MORE, ids=lambda c: privacy_audit.setting_label(c)[:90])
def test_every_dp_setting_adds_the_noise_its_accountant_counts(cell):
    report = privacy_audit.audit_cell(cell, draws=100)
    assert report.passed, report.failures
    kinds = {c.what.split(" along")[0].split(" (")[0] for c in report.checks}
    assert kinds == {"sensitivity", "noise std per entry", "noise std"}
    assert math.isfinite(report.claimed) and report.release_claim <= report.claimed + 1e-9


def _only(name, noise=None):
    return next(c for c in SMOKE + MORE if c.defense.name == name and c.protocol.name == "fedsgd"
                and c.defense.params.get("noise", noise) == noise)


def _half_noise(release):
    return lambda value, std, sensitivity, generator: release(value, 0.5 * std, sensitivity, generator)


@pytest.mark.parametrize("module, cell, noise", [(dp_sgd, "dp-sgd", None), (dp_sgd, "sketch", "pre"),
                                                 (sketching, "sketch", "post"), (diff2, "diff2", None)])
def test_half_the_noise_on_a_defense_s_release_is_caught(monkeypatch, module, cell, noise):
    """DP-SGD's noise (also before a sketch), the noise after a sketch, DIFF2's."""
    monkeypatch.setattr(module, "gaussian_release", _half_noise(privacy.gaussian_release))
    report = privacy_audit.audit_cell(_only(cell, noise), draws=100)
    assert report.failures and all("noise std" in line for line in report.failures)
    per_entry = [c for c in report.checks if c.what == "noise std per entry"]
    assert per_entry and all(not c.passed and abs(c.measured / c.expected - 0.5) < 0.01 for c in per_entry)


@pytest.mark.parametrize("path", ["restart_message", "difference_message"])
def test_half_the_noise_on_one_diff2_path_is_caught_at_that_release(monkeypatch, path):
    original = getattr(diff2, path)

    def weaker(*args):
        *head, noise, generator = args
        return original(*head, 0.5 * noise, generator)

    monkeypatch.setattr(diff2, path, weaker)
    report = privacy_audit.audit_cell(_only("diff2"), draws=100)  # telescoped: a restart, then 2 differences
    failing = {int(line.split("release ")[1].split(" of")[0]) for line in report.failures}
    assert failing == ({0} if path == "restart_message" else {1, 2}), report.failures


def test_a_sensitivity_claimed_at_half_the_clip_is_caught(monkeypatch):
    release = privacy.gaussian_release
    monkeypatch.setattr(dp_sgd, "gaussian_release",
                        lambda value, std, sensitivity, generator: release(value, 0.5 * std, 0.5 * sensitivity,
                                                                           generator))
    report = privacy_audit.audit_cell(_only("dp-sgd"), draws=100)
    assert [c.what for c in report.checks if not c.passed] == ["sensitivity"], report.failures


def test_noise_drawn_outside_the_release_is_caught_by_the_count(monkeypatch):
    def unobserved(value, std, sensitivity, generator):
        return {k: v + std * torch.randn(v.shape, generator=generator) for k, v in value.items()}

    monkeypatch.setattr(dp_sgd, "gaussian_release", unobserved)
    report = privacy_audit.audit_cell(_only("dp-sgd"), draws=10)
    assert report.failures == [f"{report.setting}: its accountant counts 1 Gaussian releases per message, 0 noise "
                               "draws were observed"]


class Noiseless(Client):
    """A mechanism that releases the clipped sum without noise but tells its accountant it drew z = 3."""

    def share(self, x, y, generator):
        self.releases.append((3.0, 1.0, 1))
        total = dp_sgd.clipped_sum(self.protocol, self.protocol.params, x, y, 1.0)
        privacy.observe_release(total, total, 1.0)
        return total

    def cost(self):
        return {**super().cost(), **privacy.dp_cost(self.releases, 1, 1e-5, "add-remove")}


def test_a_noiseless_mechanism_claiming_an_epsilon_is_caught_by_the_lower_bound():
    images = data.load("mnist-sample")
    model = models.build("mlp", {"width": 8}, images, "untrained", seed=0)
    protocol = protocols.build("fedsgd", {}, model)
    candidates = [(images.images[i:i + 1], images.labels[i:i + 1]) for i in range(2, 6)]
    report = privacy_audit.audit("noiseless", lambda: Noiseless(protocol), images.images[:2], images.labels[:2],
                                 candidates, draws=20, lower_draws=200)
    assert report.release_claim < 2 and report.lower > 2 * report.release_claim
    assert any("a test tells the neighbours apart" in line for line in report.failures)


def test_the_lower_bound_of_calibrated_gaussian_scores_stays_below_the_claim():
    gen = torch.Generator().manual_seed(0)
    d, d2 = torch.randn(4000, generator=gen).numpy(), (torch.randn(4000, generator=gen) + 1).numpy()
    claim = privacy.rdp_epsilon([(1.0, 1.0, 1)], 1e-5)
    lower = privacy_audit.lower_bound(d, d2, 1e-5)
    assert 0.5 < lower < claim  # z = 1, one release: 4.73 claimed
    assert privacy_audit.lower_bound(d, d + 100, 1e-5) > claim  # perfectly separated: far above


class OpacusReference(Client):
    """Opacus' own DPOptimizer as the mechanism: one DP-SGD step (sum loss, clip C, noise z C on the clipped sum);
    the clipped sum and the noisy sum it released (its gradient: a sum loss is not rescaled) reported to the audit.
    ``drawn``
    scales the noise multiplier Opacus is given, while the accountant counts ``z``."""

    def __init__(self, protocol, z: float = 1.0, clip: float = 1.0, drawn: float = 1.0):
        super().__init__(protocol)
        self.z, self.clip, self.drawn = z, clip, drawn

    def share(self, x, y, generator):
        import copy

        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        self.releases.append((self.z, 1.0, 1))
        model = GradSampleModule(copy.deepcopy(self.protocol.model))
        seed = int(torch.randint(2 ** 62, (1,), generator=generator))
        optimizer = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.0), noise_multiplier=self.z * self.drawn,
                                max_grad_norm=self.clip, expected_batch_size=len(x), loss_reduction="sum",
                                generator=torch.Generator().manual_seed(seed))
        torch.nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
        optimizer.pre_step()
        named = [(n.removeprefix("_module."), p) for n, p in model.named_parameters()]
        privacy.observe_release({n: p.summed_grad for n, p in named}, {n: p.grad for n, p in named},
                                self.clip)
        return {n: p.grad.detach() for n, p in named}

    def cost(self):
        return {**super().cost(), **privacy.dp_cost(self.releases, 1, 1e-5, "add-remove")}


@pytest.mark.parametrize("drawn", [1.0, 0.5])
def test_opacus_dp_optimizer_is_audited_by_the_same_code(drawn):
    images = data.load("mnist-sample")
    protocol = protocols.build("fedsgd", {}, models.build("mlp", {"width": 16}, images, "untrained", seed=0))
    candidates = [(images.images[i:i + 1], (images.labels[i:i + 1] + 1) % 10) for i in range(4, 8)]
    report = privacy_audit.audit("opacus", lambda: OpacusReference(protocol, drawn=drawn), images.images[:4],
                                 images.labels[:4], candidates, draws=100)
    assert report.passed == (drawn == 1.0), report.failures
    sensitivity = next(c for c in report.checks if c.what == "sensitivity")
    assert sensitivity.passed and sensitivity.measured > 0.5  # the mislabelled canary's clipped gradient


TINY = """
name: dptiny
defaults: {dataset: mnist-sample, model: {name: mlp, width: 8}, protocol: fedsgd, batch_size: 1}
grid:
  attack: {name: ig, iterations: 5, tv: 0.0}
  defense: [none, {name: dp-sgd, noise_multiplier: 1.0}]
  seed: [0]
"""


def test_a_run_audits_its_dp_settings_into_its_report_and_exits_3_when_one_fails(tmp_path, monkeypatch):
    from giabench.app import cli

    (tmp_path / "s.yaml").write_text(TINY)
    assert cli.main(["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "ok"), "--quiet"]) == 0
    summary = (tmp_path / "ok" / "privacy_audit.csv").read_text()
    assert summary.count("\n") == 2 and "defense dp-sgd" in summary  # one DP setting; none is not audited
    page = (tmp_path / "ok" / "leaderboard.html").read_text()
    assert "Privacy audit of the DP defenses" in page and "4.73" in page
    monkeypatch.setattr(dp_sgd, "gaussian_release", _half_noise(privacy.gaussian_release))
    assert cli.main(["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "bad"), "--quiet"]) == 3
    assert "FAIL: " in (tmp_path / "bad" / "leaderboard.html").read_text()
