"""A third-party package (``tests/plugin``: an attack and a defense with server-side state, registered through the
entry points alone) does what a built-in one does: it is listed, joins an audit's battery where it applies (and is
left out with its reason where not), trains in ``giabench utility`` and is gated by ``giabench regress``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

PLUGIN = Path(__file__).parent / "plugin"
SUITE = """
name: toy
defaults:
  dataset: mnist-sample
  model: {name: mlp, width: 32}
  protocol: fedsgd
  selection: ordered
grid:
  attack: [toy-row, fc-invert]
  defense: [none, {name: toy-momentum, sigma: 0.0005}]
  seed: [0, 1]
"""


def giabench(*args: str, env: dict | None = None, python: str | None = None) -> subprocess.CompletedProcess:
    """``giabench ARGS`` (or ``python -c PYTHON``) in a fresh process that finds the plugin on its path."""
    environment = {**os.environ, "PYTHONPATH": str(PLUGIN), **(env or {})}
    command = [sys.executable, "-c", python] if python else [sys.executable, "-m", "giabench", *args]
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)


def test_the_plugin_is_listed_with_the_built_ins():
    attacks, defenses = giabench("list", "attacks"), giabench("list", "defenses")
    assert attacks.returncode == 0 and defenses.returncode == 0, attacks.stderr + defenses.stderr
    assert "toy-row" in attacks.stdout and "fc-invert" in attacks.stdout
    assert "toy-momentum" in defenses.stdout and "dp-sgd" in defenses.stdout


def test_the_plugin_attack_joins_the_audit_battery_where_it_applies():
    script = """
import json
from torch import nn
from giabench.app.audit import battery
dense = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 16), nn.ReLU(), nn.Linear(16, 10))
conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 10))
out = {}
for name, net in (("dense", dense), ("conv", conv)):
    entries, skipped = battery(net, (3, 32, 32), {"name": "fedsgd"}, [1, 4], "quick")
    out[name] = {"entries": {e["attack"]["name"]: e["batch_size"] for e in entries}, "skipped": dict(skipped)}
print(json.dumps(out))
"""
    done = giabench(python=script)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["dense"]["entries"]["toy-row"] == [1]  # batch 4 left out by the attack's own rule
    assert "toy-row" not in found["conv"]["entries"]
    assert found["conv"]["skipped"]["toy-row"] == "toy-row reads a first linear layer with a bias; this one is Conv2d"


def test_the_plugin_defense_trains_with_its_server_state(tmp_path):
    config = tmp_path / "utility.yaml"
    config.write_text("dataset: mnist-5k\nmodel: {name: mlp, width: 32}\nprotocol: fedsgd\nrounds: 15\n"
                      "server_lr: 0.05\ndefenses:\n  - {name: toy-momentum, momentum: 0.0}\n"
                      "  - {name: toy-momentum, momentum: 0.9}\n")
    done = giabench("utility", str(config), "--out", str(tmp_path / "out"), "--quiet")
    assert done.returncode == 0, done.stderr
    rows = pd.read_csv(tmp_path / "out" / "utility.csv")
    toy = rows[rows["defense"] == "toy-momentum"]
    toy = toy.set_index(toy["defense_params"].map(lambda p: json.loads(p)["momentum"]))
    assert len(toy) == 2 and (toy["bytes_per_round"] > 0).all()
    # the server's momentum buffer, carried between rounds, speeds up training at the same step size
    assert toy.loc[0.9, "accuracy"] > toy.loc[0.0, "accuracy"] + 0.05, toy[["accuracy"]]


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gate")
    suite = folder / "toy.yaml"
    suite.write_text(SUITE)
    baseline = folder / "baseline.csv"
    done = giabench("regress", "--suite", str(suite), "--baseline", str(baseline), "--update", "--quiet")
    assert done.returncode == 0, done.stderr
    return suite, baseline


def test_the_gate_passes_the_plugin_on_unchanged_code(gated):
    suite, baseline = gated
    summary = pd.read_csv(baseline)
    assert set(summary["attack"]) == {"toy-row", "fc-invert"} and "toy-momentum" in set(summary["defense"])
    done = giabench("regress", "--suite", str(suite), "--baseline", str(baseline), "--quiet")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 regressions" in done.stdout


def test_the_gate_fails_when_the_plugin_defense_leaks_more(gated):
    suite, baseline = gated
    done = giabench("regress", "--suite", str(suite), "--baseline", str(baseline), "--quiet",
                    env={"TOY_SIGMA_SCALE": "0"})
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("REGRESSION")]
    assert lines and all("toy-momentum" in line for line in lines), done.stdout


DP_SUITE = """
name: toy-dp
defaults: {dataset: mnist-sample, model: {name: mlp, width: 16}, protocol: fedsgd, batch_size: 2,
           attack: {name: ig, iterations: 1}}
grid:
  defense: {name: toy-dp, noise_multiplier: 1.0}
"""


@pytest.mark.parametrize("scale, code", [("1", 0), ("0.5", 3)])
def test_the_privacy_audit_checks_a_plugin_s_dp_defense(tmp_path, scale, code):
    """The audit names no defense: a plugin's mechanism is audited as built-ins are, and caught drawing half its
    noise."""
    (tmp_path / "dp.yaml").write_text(DP_SUITE)
    done = giabench("dp-audit", str(tmp_path / "dp.yaml"), "--out", str(tmp_path / "out"), "--draws", "50",
                    "--lower-draws", "0", "--quiet", env={"TOY_DP_NOISE_SCALE": scale})
    assert done.returncode == code, done.stderr
    assert ("pass  defense toy-dp" if code == 0 else "FAIL  defense toy-dp") in done.stdout
    if code:
        assert "release 0 of 1: noise std per entry" in done.stdout and "the accountant's is 2 " in done.stdout


def test_giabench_tune_searches_a_plugin_attack_s_own_space(tmp_path):
    text = SUITE.replace("attack: [toy-row, fc-invert]", "attack: toy-descent")
    (tmp_path / "toy.yaml").write_text(text.replace("defense: [none, {name: toy-momentum, sigma: 0.0005}]",
                                                    "defense: none"))
    done = giabench("tune", str(tmp_path / "toy.yaml"), "--trials", "2", "--out", str(tmp_path / "tuned"), "--quiet")
    assert done.returncode == 0, done.stderr
    [entry] = json.loads((tmp_path / "tuned" / "tuned.json").read_text())["settings"]
    assert entry["attack"] == "toy-descent" and entry["space"] == {"lr": "[0.001, 1] log"}
    assert entry["trials"] == 2 and entry["tuned_value"] >= entry["default_value"]
