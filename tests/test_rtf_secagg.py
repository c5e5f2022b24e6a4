import pytest
import torch

from giabench import data, metrics, models, protocols
from giabench.attacks.analytic import RobbingTheFed
from giabench.attacks.optimization import InvertingGradients
from giabench.contracts import ServerView
from giabench.registry import defenses
from giabench.runner import surrogate

D = data.load("cifar10-sample")


def _rtf_round(batch, seed, bins=64, variant="cumulative", defense="none", dparams=None, protocol="fedsgd",
               pparams=None, brighten=None):
    index = data.sample_index(D, batch, seed)
    x, y = D.images[index], D.labels[index]
    if brighten is not None:  # push one sample far above every cut-off: it is alone in the top bin
        x = x.clone()
        x[brighten] = (0.6 + 0.4 * x[brighten]).clamp(0, 1)
    attack = RobbingTheFed(bins=bins, variant=variant)
    model = attack.prepare(models.build("lenet", {}, D, "untrained", seed).eval(), D.shape, surrogate(D, index),
                           torch.Generator().manual_seed(seed))
    proto = protocols.build(protocol, pparams or {}, model)
    client = defenses.get(defense)(proto, **(dparams or {}))
    view = ServerView(model, proto, client.share(x, y, torch.Generator()), client.public, D.shape, 10, batch)
    recon = attack.reconstruct(view, client.simulate, torch.Generator())
    summary, rows, _ = metrics.score(recon.images, recon.labels, x, y, with_lpips=False, recovered=recon.recovered)
    values = x.flatten(1) @ attack.query_vector
    bins = torch.searchsorted(attack.cutoffs, values)  # bin i holds c_{i-1} < q <= c_i; bin K: q > c_{K-1}
    singletons = int((torch.bincount(bins, minlength=bins.max() + 1) == 1)[bins].sum())
    if brighten is not None:
        assert bins[brighten] == bins.max() == attack.cutoffs.numel() and (bins == bins.max()).sum() == 1
        return rows[brighten]["psnr"]
    return summary, singletons


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rtf_recovers_exactly_every_sample_alone_in_its_bin(seed):
    summary, singletons = _rtf_round(8, seed)
    assert summary["exact"] == singletons >= 1


@pytest.mark.parametrize("seed", [0, 1])
def test_rtf_recovers_a_sample_alone_in_the_top_cumulative_bin(seed):
    assert _rtf_round(8, seed, brighten=3) > 40


def test_rtf_sparse_variant_survives_local_steps():
    summary, singletons = _rtf_round(4, 0, variant="sparse", protocol="fedavg",
                                     pparams={"epochs": 5, "batch_size": 0, "lr": 0.01})
    assert summary["exact"] >= singletons - 1 and summary["exact"] >= 2


def test_rtf_still_works_on_a_securely_aggregated_update():
    summary, singletons = _rtf_round(8, 0, defense="secagg", dparams={"clients": 4})
    assert summary["exact"] == singletons


def test_secagg_message_is_the_sum_of_the_clients_updates():
    model = models.build("lenet", {}, D, "untrained", 0).eval()
    proto = protocols.build("fedsgd", {}, model)
    client = defenses.get("secagg")(proto, clients=2)
    x, y = data.sample(D, 4, 0)
    message = client.share(x, y, torch.Generator())
    expected = {k: proto.update(x[:2], y[:2])[k] + proto.update(x[2:], y[2:])[k] for k in message}
    assert all(torch.allclose(message[k], expected[k], atol=1e-6) for k in message)
    assert all(torch.allclose(message[k], v, atol=1e-6) for k, v in client.simulate(x, y).items())


def test_secagg_degrades_an_optimization_attack():
    """One client's own update (one image) against the aggregate of four such clients."""
    m = data.load("mnist-sample")
    x, y = data.sample(m, 4, 0, "ordered")
    psnr = {}
    for defense, params, batch in (("none", {}, 1), ("secagg", {"clients": 4}, 4)):
        model = models.build("mlp", {"width": 64}, m, "untrained", 0).eval()
        proto = protocols.build("fedsgd", {}, model)
        client = defenses.get(defense)(proto, **params)
        xb, yb = x[:batch], y[:batch]
        view = ServerView(model, proto, client.share(xb, yb, torch.Generator()), {}, m.shape, 10, batch, yb)
        recon = InvertingGradients(iterations=150, tv=0.0).reconstruct(view, client.simulate, torch.Generator())
        psnr[defense] = metrics.score(recon.images, yb, xb, yb, with_lpips=False)[0]["psnr"]
    assert psnr["secagg"] < psnr["none"] - 5
