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
from giabench.app.commands import write_leaderboard
from giabench.app.integrations.recorder import LeakageRecorder, Reply
from giabench.privacy import rdp_epsilon
from giabench.store import Store

CONFIG = {"epochs": 1, "batch-size": 0, "lr": 0.1}


def _round(model, x, y):
    """The global weights and a client's weights after one full-batch SGD step on (x, y)."""
    sent = {k: v.clone() for k, v in model.state_dict().items()}
    trained = _model()
    trained.load_state_dict(sent)
    F.cross_entropy(trained(x), y).backward()
    return sent, {k: v.detach() - 0.1 * v.grad for k, v in trained.named_parameters()}


def _model():
    return models.build("mlp", {"width": 16}, data.load("mnist-sample"), "untrained", 0)


def _recorder(tmp_path, **kwargs):
    model = _model()
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


def test_a_defense_declared_in_the_fit_configuration_is_the_adaptive_attackers_model(tmp_path):
    """The server's train config declares 4-bit uniform quantization; the client quantizes its update so. The attacker
    simulates the quantizer (straight-through) and the cell carries the quantizer's bytes."""
    from giabench.defenses.quantization import uniform

    imageset = data.load("mnist-sample")
    x, y = imageset.images[:1], imageset.labels[:1]
    model, recorder = _recorder(tmp_path, attacks=[{"name": "ig", "iterations": 30}],
                                truth=lambda node, server_round, metrics: (x, y))
    sent, received = _round(model, x, y)
    quantized = {k: sent[k] - uniform(sent[k] - received[k], 4) for k in received}
    config = {**CONFIG, "giabench-defense": json.dumps({"name": "quantize", "scheme": "uniform", "bits": 4})}
    recorder.take_all(1, sent, {1: config}, [Reply(1, {"num-examples": 1}, {}, lambda: quantized)])
    row = Store(tmp_path).cells().iloc[0]
    assert row["status"] == "ok" and row["defense"] == "quantize" and json.loads(row["defense_params"])["bits"] == 4
    plain = sum(p.numel() for p in model.parameters())
    assert row["bytes"] == math.ceil((plain * 4 + 32 * 4) / 8)  # 4 bits per entry and a scale per tensor
    assert row["psnr"] > 12  # 15.5 dB measured; a noise-level reconstruction scores about 8


def test_the_message_is_the_update_giabench_s_own_client_computes():
    """w_0 - w_K of a real client's SGD step is giabench's FedAvg update of the same batch, and a noiseless Opacus
    client (q = 1) is, through its declaration, giabench's dp-sgd simulation: the attacker models what was sent."""
    from opacus import PrivacyEngine

    from giabench import protocols
    from giabench.app.integrations.recorder import declared_defense, fedavg_params, opacus_declaration, update_of
    from giabench.registry import defenses

    imageset = data.load("mnist-sample")
    x, y = imageset.images[:4], imageset.labels[:4]
    model = _model()
    sent, received = _round(model, x, y)
    ours = protocols.build("fedavg", {"epochs": 1, "batch_size": 0, "lr": 0.1}, model).update(x, y)
    message = update_of(model, sent, received)
    assert all(torch.allclose(message[k], ours[k], atol=1e-6) for k in ours)

    net = _model()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    private, optimizer, loader = PrivacyEngine(accountant="rdp").make_private(
        module=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1), data_loader=loader, noise_multiplier=0.0,
        max_grad_norm=0.05, poisson_sampling=True)
    for _ in range(2):
        for xb, yb in loader:
            optimizer.zero_grad()
            F.cross_entropy(private(xb), yb).backward()
            optimizer.step()
    declared = opacus_declaration(optimizer, loader, epochs=2, delta=1e-5)
    defense = declared_defense(declared, {"name": "none"})
    client = defenses.get("dp-sgd")(protocols.build("fedavg", fedavg_params(declared), model),
                                    **{k: v for k, v in defense.items() if k != "name"})
    simulated = client.simulate(x, y)
    opacus = update_of(model, sent, dict(net.named_parameters()))
    assert all(torch.allclose(opacus[k], simulated[k], atol=1e-6) for k in simulated)
    assert any(float(v.abs().max()) > 1e-4 for v in simulated.values())
