"""The recorder behind the Flower strategies, fed replies directly: malformed replies, a configuration without what
the FedAvg simulation needs and an attack that cannot run become stored cells with the reason, never an exception;
a server that does not know the private batch stores the reconstruction unscored; DP releases compose over rounds."""

import json
import logging
import math

import pandas as pd
import torch
import torch.nn.functional as F

from giabench import data, models
from giabench.commands import write_leaderboard
from giabench.integrations.recorder import LeakageRecorder, Reply
from giabench.privacy import rdp_epsilon
from giabench.store import Store

CONFIG = {"epochs": 1, "batch-size": 0, "lr": 0.1}


def _round(model, x, y):
    """The global weights and a client's weights after one full-batch SGD step on (x, y)."""
    sent = {k: v.clone() for k, v in model.state_dict().items()}
    trained = models.build("mlp", {"width": 16}, data.load("mnist-sample"), "untrained", 0)
    trained.load_state_dict(sent)
    F.cross_entropy(trained(x), y).backward()
    return sent, {k: v.detach() - 0.1 * v.grad for k, v in trained.named_parameters()}


def _recorder(tmp_path, **kwargs):
    model = models.build("mlp", {"width": 16}, data.load("mnist-sample"), "untrained", 0)
    return model, LeakageRecorder(model=model, dataset="mnist-sample", out=tmp_path, **kwargs)


def test_bad_replies_are_stored_with_their_reason_and_nothing_is_raised(tmp_path, caplog):
    imageset = data.load("mnist-sample")
    x, y = imageset.images[:1], imageset.labels[:1]
    model, recorder = _recorder(tmp_path, attacks=["fc-invert", "rtf"])
    sent, received = _round(model, x, y)
    wrong_shape = {**received, "net.layers.1.weight": torch.zeros(3, 3)}

    def broken():
        raise ValueError("the ArrayRecord does not decode")

    replies = [Reply(1, {"num-examples": 1}, {}, lambda: received),  # no truth: unscored
               Reply(2, {"num-examples": 1}, {}, lambda: wrong_shape),
               Reply(3, {}, {}, lambda: received),
               Reply(4, {"num-examples": 1}, {"giabench-defense": "no-such-defense"}, lambda: received),
               Reply(5, {"num-examples": 1}, {}, lambda: received),
               Reply(6, {"num-examples": 1}, {"lr": "fast"}, lambda: received),
               Reply(7, {"num-examples": 1}, {}, broken)]
    configs = {n: CONFIG for n in (1, 2, 3, 4, 6, 7)} | {5: {"epochs": 1, "lr": 0.1}}
    with caplog.at_level(logging.WARNING, logger="flwr"):
        recorder.take_all(1, sent, configs, replies)
    cells = Store(tmp_path).cells()
    cells["node"] = [json.loads(c)["flower"]["client"] for c in cells["config"]]
    by = {(n, a): r for n, a, r in zip(cells["node"], cells["attack"], cells.to_dict("records"), strict=True)}
    assert len(by) == 14
    unscored = by[(1, "fc-invert")]
    assert unscored["status"] == "ok" and pd.isna(unscored["psnr"]) and unscored["lpips_source"] == "unscored"
    assert (tmp_path / unscored["image"]).is_file()  # the reconstruction is kept for whoever knows the batch
    assert by[(1, "rtf")]["status"] == "not-applicable" and "modify-model" in by[(1, "rtf")]["note"]
    assert by[(2, "fc-invert")]["status"] == "failed" and "shape (3, 3)" in by[(2, "fc-invert")]["note"]
    assert "num-examples" in by[(3, "fc-invert")]["note"]
    assert "no-such-defense" in by[(4, "fc-invert")]["note"]
    assert "'batch-size'" in by[(5, "fc-invert")]["note"]
    assert "must be numbers" in by[(6, "fc-invert")]["note"]
    assert "does not decode" in by[(7, "fc-invert")]["note"]
    assert "giabench: round 1, client 2" in caplog.text


def test_a_dp_client_s_epsilon_composes_over_the_rounds_it_replied_in(tmp_path):
    imageset = data.load("mnist-sample")
    x, y = imageset.images[:2], imageset.labels[:2]
    model, recorder = _recorder(tmp_path, attacks=["fc-invert"], every=2,
                                truth=lambda node, server_round, metrics: (x, y))
    declared = {"giabench-defense": json.dumps({"name": "dp-sgd", "noise_multiplier": 1.5, "sample_rate": 0.5}),
                "epochs": 3, "dp-epsilon": 1.25, "dp-delta": 1e-5}
    for server_round in (1, 2):
        sent, received = _round(model, x, y)
        recorder.take_all(server_round, sent if recorder.attacks_round(server_round) else None, {7: CONFIG},
                          [Reply(7, {"num-examples": 2}, declared, lambda r=received: r)])
    cells = Store(tmp_path).cells()
    assert len(cells) == 1 and json.loads(cells["config"].iloc[0])["flower"]["round"] == 2  # round 1: accounted only
    assert cells["epsilon"].iloc[0] == rdp_epsilon([(1.5, 0.5, 3), (1.5, 0.5, 3)], 1e-5)  # both rounds, 3 steps each
    assert not math.isnan(cells["psnr"].iloc[0])
    write_leaderboard(tmp_path, "flower")  # the report's per-round table: giabench's epsilon beside the client's
    table = pd.read_csv(tmp_path / "rounds.csv")
    assert table[["round", "client", "client_epsilon"]].values.tolist() == [[2, 7, 1.25]]
    page = (tmp_path / "leaderboard.html").read_text()
    assert "Leakage per round" in page and "epsilon (client&#39;s accountant)" in page
