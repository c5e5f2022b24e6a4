import json
import math
import pickle
from pathlib import Path

import pytest
import torch

from giabench import data, lpips, metrics

X = data.load("cifar10-sample").images[:4]
Y = torch.tensor([3, 8, 8, 0])


def test_perfect_reconstruction_in_any_order_scores_perfectly():
    summary, rows, order = metrics.score(X.flip(0), Y.flip(0), X, Y)
    assert order.tolist() == [3, 2, 1, 0]
    assert summary["psnr"] == metrics.PSNR_CEILING and summary["ssim"] == pytest.approx(1.0)
    assert summary["lpips"] == pytest.approx(0.0, abs=1e-6) and summary["label_acc"] == 1.0
    assert [r["label_pred"] for r in rows] == Y.tolist()


def test_a_recovered_image_keeps_its_target_whatever_the_unfilled_slots_hold():
    """Two exact reconstructions and two unfilled slots: the minimum-total-MSE assignment over all four slots would
    hand an exact image to the wrong target when the fill is closer to it; matching by the recovered mask does not."""
    truth = torch.stack([torch.zeros(3, 4, 4), torch.full((3, 4, 4), 0.45), torch.ones(3, 4, 4),
                         torch.full((3, 4, 4), 0.55)])
    recon = torch.stack([truth[1], truth[2], torch.full((3, 4, 4), 0.5), torch.full((3, 4, 4), 0.5)])
    recovered = torch.tensor([True, True, False, False])
    summary, rows, order = metrics.score(recon, None, truth, Y, with_lpips=False, recovered=recovered)
    assert order[1] == 0 and order[2] == 1 and summary["exact"] == 2
    assert rows[1]["psnr"] == rows[2]["psnr"] == metrics.PSNR_CEILING
    hungarian = metrics.match(recon, truth)
    assert metrics.score(recon, None, truth, Y, with_lpips=False)[0]["exact"] == 1 and hungarian[1] != 0


def test_two_reconstructions_of_one_target_count_it_once():
    recon = torch.stack([X[0], X[0] + 1e-4, torch.full_like(X[0], 0.5), torch.full_like(X[0], 0.5)])
    summary, _, order = metrics.score(recon, None, X, Y, with_lpips=False, recovered=torch.tensor([1, 1, 0, 0]).bool())
    assert order[0] == 0 and sorted(order.tolist()) == [0, 1, 2, 3] and summary["exact"] == 1


def test_psnr_is_capped_where_float_rounding_starts():
    assert metrics.psnr(0.0) == metrics.psnr(1e-12) == 80.0 and metrics.psnr(1e-4) == pytest.approx(40.0)


def test_psnr_of_known_noise():
    noisy = (X + 0.1).clamp(0, 1)
    summary, rows, _ = metrics.score(noisy, None, X, Y, with_lpips=False)
    mse = ((noisy - X) ** 2).flatten(1).mean(1)
    assert summary["psnr"] == pytest.approx(float((10 * torch.log10(1 / mse)).mean()), rel=1e-4)
    assert [r["psnr"] for r in rows] == pytest.approx((10 * torch.log10(1 / mse)).tolist(), rel=1e-4)
    assert math.isnan(summary["label_acc"])


def _lpips_pairs() -> dict:
    """Six kinds of image pairs (4 pairs each): identical, slight and strong noise, different images, 28 px grayscale
    (the upsampling path), and a flat gray image."""
    c, m = data.load("cifar10-sample").images[:4], data.load("mnist-sample").images[:4]
    g = torch.Generator().manual_seed(0)
    return {
        "identical": (c, c.clone()),
        "slight-noise": (c, (c + 0.02 * torch.randn(c.shape, generator=g)).clamp(0, 1)),
        "strong-noise": (c, (c + 0.3 * torch.randn(c.shape, generator=g)).clamp(0, 1)),
        "different-images": (c, c.roll(1, 0)),
        "grayscale-28px": (m, m.roll(1, 0)),
        "flat-gray": (c, torch.full_like(c, 0.5)),
    }


def test_reference_lpips_reproduces_the_values_of_the_network_it_replaced():
    """``tests/data/lpips_golden.json`` holds the distances giabench's own LPIPS network gave (1 thread) before it was
    replaced by the reference ``lpips`` package; with the same offline backbone the reference gave exactly the same
    numbers at 1 and 2 threads here (max difference 0.0), and float rounding is all another CPU may add."""
    net, source = lpips.load()
    assert source.startswith("lpips 0.1.4 (reference implementation")
    golden = json.loads((Path(__file__).parent / "data" / "lpips_golden.json").read_text())["pairs"]
    for kind, (a, b) in _lpips_pairs().items():
        assert torch.allclose(net(a, b), torch.tensor(golden[kind]), rtol=0, atol=1e-6), kind


def test_lpips_orders_distortions_and_reports_its_source():
    net, source = lpips.load()
    assert net is not None and "lpips" in source
    noise = torch.randn(X.shape, generator=torch.Generator().manual_seed(0))
    slight = net((X + 0.02 * noise).clamp(0, 1), X)
    strong = net((X + 0.3 * noise).clamp(0, 1), X)
    assert (slight < strong).all() and (slight >= 0).all()


def test_label_accuracy_counts_multisets():
    assert metrics.label_accuracy(torch.tensor([8, 8, 3, 1]), Y) == 0.75
    assert metrics.label_accuracy(torch.tensor([0, 3, 8, 8]), Y) == 1.0


def test_numpy_only_unpickler_refuses_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"w": Payload()}))
    with pytest.raises(pickle.UnpicklingError, match="only numpy arrays"):
        lpips.load_numpy_pickle(path)
