"""A real Flower run: Flower's simulation engine (Ray), 3 clients with mnist-sample digits, 2 rounds of Flower's own
FedAvg (examples/flower_app/app.py): client 0 trains with plain torch SGD, client 1 prunes its update and declares
it, client 2 trains with Opacus; giabench's LeakageStrategy attacks every update."""

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from giabench.errors import ConfigError, GiabenchError
from giabench.store import Store

flwr = pytest.importorskip("flwr", reason="the flower extra: pip install -e '.[flower]'")
from giabench.app.integrations.recorder import (  # noqa: E402
    declared_defense,
    fedavg_params,
    opacus_declaration,
    update_of,
)

pytestmark = pytest.mark.xdist_group("ray")  # one Ray cluster at a time under pytest-xdist
APP = Path(__file__).resolve().parents[1] / "examples" / "flower_app" / "app.py"
COMMAND = [sys.executable, str(APP), "--rounds", "2", "--ig-iterations", "20"]


def _cells_by_client(out):
    cells = Store(out).cells()
    cells["round"] = [json.loads(c)["flower"]["round"] for c in cells["config"]]
    cells["client"] = [json.loads(c)["flower"]["client"] for c in cells["config"]]
    return cells


def _kill_after_first_cells(out):
    """Start the app and SIGKILL its whole process group (Ray's workers included) once it has stored a cell."""
    app = subprocess.Popen([*COMMAND, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and app.poll() is None:
        try:
            if (out / "results.sqlite").exists() and len(Store(out, create=False).finished()) >= 1:
                break
        except (GiabenchError, sqlite3.Error):  # the app holds the database for a moment: look again
            pass
        time.sleep(0.2)
    os.killpg(app.pid, signal.SIGKILL)
    app.wait()


def test_a_flower_run_is_attacked_update_by_update_and_resumes_after_a_kill(tmp_path):
    _kill_after_first_cells(tmp_path)
    before = Store(tmp_path).cells().set_index("cell")["finished_at"]
    assert 1 <= len(before) < 12
    done = subprocess.run([*COMMAND, "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cells = _cells_by_client(tmp_path)
    assert len(cells) == 3 * 2 * 2 and set(cells["status"]) == {"ok"}, cells[["attack", "status", "note"]]
    assert (cells.set_index("cell")["finished_at"].reindex(before.index) == before).all()  # kept, not redone
    assert "giabench: round 2" in done.stdout + done.stderr

    plain, pruned, private = (cells[cells["client"] == k] for k in (0, 1, 2))
    invert = plain[plain["attack"] == "fc-invert"]
    assert (invert["psnr"] > 40).all() and set(plain["defense"]) == {"none"}  # exact at B = 1 from Flower's update
    assert set(pruned["defense"]) == {"prune"} and (pruned["bytes"] < plain["bytes"].iloc[0] / 4).all()
    assert (pruned.loc[pruned["attack"] == "fc-invert", "psnr"] < 30).all()
    assert set(private["defense"]) == {"dp-sgd"}
    assert (private.loc[private["attack"] == "fc-invert", "psnr"] < 20).all()  # at the dp-sgd level, far from exact
    for _, row in private.iterrows():  # Opacus' own accountant, composed over the rounds, is giabench's epsilon
        client = json.loads(row["extra"])
        assert math.isclose(row["epsilon"], client["client_epsilon"], rel_tol=1e-9), (row["epsilon"], client)
        # 2 Poisson steps, the protocol resolved with its defaults
        assert json.loads(row["protocol_params"]) == {"batch_size": 0, "epochs": 2, "lr": 0.1, "shuffle": False}
    epsilon = private.groupby("round")["epsilon"].first()
    assert epsilon[2] > epsilon[1] > 0


def test_the_legacy_strategy_interface_records_the_same_cells(tmp_path):
    done = subprocess.run([*COMMAND, "--api", "legacy", "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cells = _cells_by_client(tmp_path)
    assert len(cells) == 12 and set(cells["status"]) == {"ok"}, cells[["attack", "status", "note"]]
    assert (cells.loc[(cells["client"] == 0) & (cells["attack"] == "fc-invert"), "psnr"] > 40).all()
    assert cells.groupby("client")["defense"].first().to_dict() == {0: "none", 1: "prune", 2: "dp-sgd"}
    private = cells[cells["client"] == 2]
    assert all(math.isclose(e, json.loads(x)["client_epsilon"], rel_tol=1e-9)
               for e, x in zip(private["epsilon"], private["extra"], strict=True))


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


def test_an_opacus_client_s_declaration_is_read_off_its_own_optimizer_and_refused_where_it_differs():
    from opacus import PrivacyEngine

    def private(records, batch_size, **sgd):
        data = torch.utils.data.TensorDataset(torch.randn(records, 3), torch.zeros(records, dtype=torch.long))
        model = torch.nn.Linear(3, 2)
        _, optimizer, loader = PrivacyEngine(accountant="rdp").make_private(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.5, **sgd),
            data_loader=torch.utils.data.DataLoader(data, batch_size=batch_size), noise_multiplier=1.3,
            max_grad_norm=0.7, poisson_sampling=True)
        return optimizer, loader

    declared = opacus_declaration(*private(6, 2), epochs=3, delta=1e-5)
    assert json.loads(declared["giabench-defense"]) == {"name": "dp-sgd", "clip": 0.7, "noise_multiplier": 1.3,
                                                         "sample_rate": pytest.approx(1 / 3), "delta": 1e-5}
    assert (declared["epochs"], declared["batch-size"], declared["lr"]) == (9, 0, 0.5)  # 3 epochs of 3 steps
    with pytest.raises(ConfigError, match="divides by 1"):  # q n = 5 / 3, Opacus' expected batch int(5 / 3) = 1
        opacus_declaration(*private(5, 2), epochs=1, delta=1e-5)
    with pytest.raises(ConfigError, match="no momentum"):
        opacus_declaration(*private(6, 2, momentum=0.9), epochs=1, delta=1e-5)
