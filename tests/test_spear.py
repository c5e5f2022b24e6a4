import pytest
import torch
from torch import nn

from giabench import data, metrics, models, protocols
from giabench.attacks.spear import Spear, kernel_directions, noise_level
from giabench.contracts import ServerView
from giabench.errors import NotApplicable
from giabench.registry import defenses

D = data.load("mnist-5k")


def _attack(batch, seed, defense="none", dparams=None, width=256, **params):
    x, y = data.sample(D, batch, seed, "random")
    model = models.build("mlp", {"width": width}, D, "untrained", seed).eval()
    proto = protocols.build("fedsgd", {}, model)
    client = defenses.get(defense)(proto, **(dparams or {}))
    message = client.share(x, y, torch.Generator().manual_seed(seed))
    view = ServerView(model, proto, message, client.public, D.shape, D.num_classes, batch, y)
    recon = Spear(labels="known", **params).reconstruct(view, client.simulate, torch.Generator().manual_seed(seed))
    per = metrics.score(recon.images, recon.labels, x, y, with_lpips=False)[1]
    return recon, sum(p["psnr"] > metrics.EXACT_DB for p in per)


@pytest.mark.parametrize("seed", [0, 1])
def test_spear_recovers_every_image_of_a_batch_of_eight_exactly(seed):
    recon, exact = _attack(8, seed)
    assert exact == 8 and recon.extra["consistency"] == 1.0 and recon.extra["rank"] == 8


def test_spear_attacks_a_secure_aggregate_as_one_batch():
    """Two clients of four images each: the sum's weight gradient has rank 8 and the same ReLU sparsity."""
    recon, exact = _attack(8, 3, "secagg", {"clients": 2})
    assert exact == 8


def test_spear_recovers_nothing_through_dp_noise():
    recon, exact = _attack(8, 0, "dp-sgd", {"clip": 1.0, "noise_multiplier": 1.0}, samples=2**14)
    assert exact == 0 and recon.extra["candidates"] < 8 and recon.extra["noise_level"] > 1e-4


def test_spear_returns_no_image_when_relu_contradicts_its_choice():
    """Pruning 90 % of the update breaks the low rank: whatever directions are chosen, their inputs disagree with
    the ReLU pattern, and the slots stay unfilled rather than holding a mixture."""
    recon, exact = _attack(8, 0, "prune", {"fraction": 0.9}, samples=8192)
    assert recon.extra["consistency"] < 0.9 and not recon.recovered.any()


def test_spear_with_too_small_a_budget_fills_no_slot():
    recon, exact = _attack(12, 0, samples=1024, chunk=256)  # about 6,400 submatrices find all 12 directions
    assert exact == 0 and not recon.recovered.any() and recon.extra["sampled"] == 1024


def test_low_norm_pools_recover_a_batch_of_sixteen_that_uniform_sampling_cannot_reach_on_the_same_budget():
    """Uniform draws need about 1e6 submatrices for this batch (benchmarks/spear_sampling.py); drawing among the rows
    of G with small norms (units active for few samples) finds all 16 directions within 131,072."""
    uniform, exact_uniform = _attack(16, 0, samples=2**17, sampler="uniform")
    pooled, exact_pooled = _attack(16, 0, samples=2**17, sampler="low-norm")
    assert exact_uniform == 0 and uniform.extra["sampled"] == 2**17
    assert exact_pooled == 16 and pooled.extra["sampled"] < 2**17


def test_spear_refuses_a_batch_its_budget_cannot_reach():
    with pytest.raises(NotApplicable, match="beyond 8 times the budget"):
        _attack(16, 0, samples=1024)


def test_a_batch_beyond_the_layer_or_any_budget_is_not_applicable_with_the_reason():
    """B = 4096 on a 64-unit layer: the layer's width is the reason (2^4095 submatrices overflowed a float); past
    B = 1025 the budget's reason is still stated."""
    model = models.build("mlp", {"width": 64}, D, "untrained", 0).eval()
    view = ServerView(model, protocols.build("fedsgd", {}, model), {}, {}, D.shape, D.num_classes, 4096)
    with pytest.raises(NotApplicable, match="the first layer has 64 units, fewer than the batch of 4096"):
        Spear().reconstruct(view, None, torch.Generator())
    assert Spear().applies(model, D.shape, "fedsgd", 4096) == "the first layer has 64 units, fewer than the batch " \
                                                                "of 4096"
    assert "needs about 1.3e+617 submatrices" in Spear().too_large(4096, 2048)
    assert "needs about 2.4e+12 submatrices" in Spear().too_large(4096, 40)


def test_kernel_directions_are_unit_kernels_and_flag_rank_deficient_rows():
    rows = torch.randn(5, 3, 4, dtype=torch.float64)
    rows[4, 2] = rows[4, 0] + rows[4, 1]  # rank 2: a two-dimensional kernel
    q, full_rank = kernel_directions(rows)
    assert full_rank.tolist() == [True] * 4 + [False]
    assert torch.allclose(q.norm(dim=1), torch.ones(5, dtype=torch.float64))
    assert (rows[:4] @ q[:4, :, None]).abs().max() < 1e-10


def test_noise_level_reads_the_noise_std_off_the_discarded_singular_values():
    low_rank = torch.randn(300, 5, dtype=torch.float64) @ torch.randn(5, 400, dtype=torch.float64)
    noisy = low_rank + 0.01 * torch.randn(300, 400, dtype=torch.float64)
    assert noise_level(torch.linalg.svdvals(noisy), 5, 400) == pytest.approx(0.01, rel=0.05)


@pytest.mark.parametrize(("net", "batch", "reason"), [
    (nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.Tanh(), nn.Linear(64, 10)), 8, "not followed by ReLU"),
    (nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.LeakyReLU(), nn.Linear(64, 10)), 8, "not followed by ReLU"),
    (nn.Sequential(nn.Flatten(), nn.Linear(784, 4), nn.ReLU(), nn.Linear(4, 10)), 8, "4 units, fewer than"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2704, 10)), 8, "Conv2d"),
    (nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10)), 1, "fc-invert"),
    (nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10)), 64, "beyond 8 times"),
])
def test_spear_states_why_it_does_not_apply(net, batch, reason):
    assert reason in Spear().applies(net, (1, 28, 28), "fedsgd", batch)


def test_spear_applies_to_a_relu_mlp_written_with_the_functional_relu():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(784, 64), nn.Linear(64, 10)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x.flatten(1))))

    assert Spear().applies(Functional(), (1, 28, 28), "fedsgd", 8) is None


def test_spear_refuses_a_message_without_the_first_layer_in_the_clear():
    x, y = data.sample(D, 4, 0, "random")
    model = models.build("mlp", {"width": 64}, D, "untrained", 0).eval()
    proto = protocols.build("fedsgd", {}, model)
    view = ServerView(model, proto, {}, {}, D.shape, D.num_classes, 4, y)
    with pytest.raises(NotApplicable, match="in the clear"):
        Spear().reconstruct(view, None, torch.Generator())
