import json

import pandas as pd
import pytest
import torch
from torch import nn

from giabench import metrics, models, protocols, runner, suite
from giabench.attacks.rgap import RGAP
from giabench.contracts import Client, ServerView
from giabench.errors import ConfigError, NotApplicable

SHAPE = (1, 12, 12)


def _attack(net: nn.Module, seed: int = 0, batch: int = 1):
    torch.manual_seed(seed)
    model = models.Classifier(net, [0.5], [0.5]).eval()
    x, y = torch.rand(batch, *SHAPE), torch.randint(0, 3, (batch,))
    proto = protocols.build("fedsgd", {}, model)
    client = Client(proto)
    view = ServerView(model, proto, client.share(x, y, torch.Generator()), {}, SHAPE, 3, batch)
    return RGAP(labels="inferred:idlg").reconstruct(view, client.simulate, torch.Generator()), x, y


@pytest.mark.parametrize("seed", range(3))
def test_rgap_inverts_cnn6_exactly_and_reports_full_rank_per_layer(seed):
    torch.manual_seed(seed)
    recon, x, y = _attack(models.CNN6(SHAPE, 3), seed)
    summary, _, _ = metrics.score(recon.images, recon.labels, x, y, with_lpips=False)
    assert summary["psnr"] > 60 and summary["label_acc"] == 1.0
    layers = recon.extra["layers"]
    assert [r["layer"] for r in layers] == [f"features.{i}" for i in range(0, 12, 2)] + ["fc"]
    assert all(r["rank"] == r["unknowns"] and r["residual"] < 1e-4 for r in layers)


def test_rgap_handles_sigmoid_layers_with_biases():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, stride=1, padding=1), nn.Sigmoid(), nn.Flatten(), nn.Linear(8 * 144, 3))
    recon, x, y = _attack(net)
    assert metrics.score(recon.images, recon.labels, x, y, with_lpips=False)[0]["psnr"] > 50


def test_rgap_refuses_a_rank_deficient_layer_and_names_it():
    """One 3x3 stride-2 filter over 144 inputs: 36 forward plus 9 gradient equations cannot fix 144 unknowns."""
    net = nn.Sequential(nn.Conv2d(1, 1, 3, stride=2, padding=1, bias=False), nn.LeakyReLU(0.2), nn.Flatten(),
                        nn.Linear(36, 3))
    with pytest.raises(NotApplicable, match=r"layer 0 is rank deficient \(rank \d+ < 144 unknowns") as info:
        _attack(net)
    assert info.value.details["layers"][0]["rank"] <= 45


def test_rgap_refuses_non_invertible_activations_and_batches():
    with pytest.raises(NotApplicable, match="ReLU"):
        _attack(models.MLP(SHAPE, 3, width=8))
    with pytest.raises(NotApplicable, match="batch size is 2"):
        _attack(models.CNN6(SHAPE, 3), batch=2)
    with pytest.raises(ConfigError, match="needs protocol fedsgd"):
        RGAP().requirements("fedavg")


def test_a_not_applicable_cell_is_stored_with_its_reason_not_a_score(tmp_path):
    loaded = suite.expand({"defaults": {"dataset": "mnist-sample", "model": {"name": "mlp", "width": 8},
                                        "attack": {"name": "rgap"}}, "grid": {"seed": [0]}})
    cells = runner.run_suite(loaded, tmp_path, runner.Environment(), show_progress=False).cells()
    row = cells.iloc[0]
    assert row["status"] == "not-applicable" and "ReLU" in row["note"]
    assert pd.isna(row["psnr"]) and json.loads(row["extra"]) == {}
