"""A real Flower run: Flower's simulation engine (Ray), 3 clients with one mnist-sample digit each, 2 rounds of
Flower's own FedAvg, the clients training with plain torch SGD (examples/flower_app/app.py), giabench's
LeakageStrategy attacking every update."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from giabench.errors import ConfigError
from giabench.store import Store

flwr = pytest.importorskip("flwr", reason="the flower extra: pip install -e '.[flower]'")
from giabench.integrations.flower import declared_defense, fedavg_params, update_of  # noqa: E402

APP = Path(__file__).resolve().parents[1] / "examples" / "flower_app" / "app.py"


def _run_app(out, rounds):
    done = subprocess.run([sys.executable, str(APP), "--out", str(out), "--rounds", str(rounds),
                           "--ig-iterations", "20"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def test_every_update_of_a_flower_run_is_a_stored_cell_and_a_rerun_skips_them(tmp_path):
    log = _run_app(tmp_path, 2)
    cells = Store(tmp_path).cells()
    assert len(cells) == 3 * 2 * 2 and set(cells["status"]) == {"ok"}, cells[["attack", "status", "note"]]
    invert = cells[cells["attack"] == "fc-invert"]
    assert (invert["psnr"] > 40).all()  # exact at batch 1 on the MLP, from the update Flower's client really sent
    assert cells["protocol_params"].str.contains('"lr": 0.1').all()
    assert "giabench: round 2" in log
    _run_app(tmp_path, 2)  # the same app again: every attacked update is stored already
    assert len(Store(tmp_path).cells()) == 12


def test_the_fit_configuration_and_the_reply_are_checked_naming_what_is_missing():
    with pytest.raises(ConfigError, match="'batch-size'"):
        fedavg_params({"epochs": 1, "lr": 0.1})
    assert fedavg_params({"local-epochs": 2, "batch-size": 0, "lr": 0.5}) == {"epochs": 2, "batch_size": 0, "lr": 0.5}
    model = torch.nn.Linear(3, 2)
    sent = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="no parameter 'bias'"):
        update_of(model, sent, {"weight": sent["weight"]})
    with pytest.raises(ConfigError, match=r"weight has shape \(2, 2\)"):
        update_of(model, sent, {"weight": torch.zeros(2, 2), "bias": sent["bias"]})
    assert declared_defense({"giabench-defense": '{"name": "dp-sgd", "clip": 1.0}'}, {"name": "none"}) == \
        {"name": "dp-sgd", "clip": 1.0}
    assert declared_defense({}, {"name": "none"}) == {"name": "none"}
