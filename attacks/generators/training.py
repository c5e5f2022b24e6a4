"""``giabench train-generator``: a seeded DCGAN training loop (Radford et al., ICLR 2016) with the non-saturating
GAN loss (Goodfellow et al., NeurIPS 2014),
    D: max  E log s(D(x)) + E log(1 - s(D(G(z)))),      G: max  E log s(D(G(z))),
Adam (lr 2e-4, betas 0.5 / 0.999), minibatches drawn in a seeded order. A grid of 64 samples from fixed latents is
written every ``grid_every`` epochs and at the end. Everything random comes from ``seed`` and the thread count is fixed,
so the same command reproduces the same weights on the same kind of CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from giabench import data
from giabench.attacks.generators import checkpoint
from giabench.attacks.generators.dcgan import DCGANDiscriminator, DCGANGenerator
from giabench.images import tile


def sample_grid(images: torch.Tensor, columns: int = 8) -> np.ndarray:
    """N x C x H x W in [0, 1] -> an H x W x 3 uint8 grid, 2 pixels between images and 1 at the border."""
    return tile(images, columns, pad=2, margin=1)


def train(dataset: str, out: str | Path, *, dataset_params: dict | None = None, epochs: int = 20, batch: int = 64,
          lr: float = 2e-4, latent_dim: int = 64, width: int = 64, seed: int = 0, threads: int = 2,
          grid_every: int = 5, show_progress: bool = True) -> dict:
    """Train on ``dataset``'s images and write ``out`` (.pt), its .json and sample grids; returns the metadata."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    imageset = data.load(dataset, **(dataset_params or {}))
    training = {"dataset": dataset, "dataset_params": dataset_params or {}, "epochs": epochs, "batch": batch,
                "lr": lr, "latent_dim": latent_dim, "width": width, "seed": seed, "threads": threads,
                "images": len(imageset), "torch": torch.__version__}
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            gen_net, disc = DCGANGenerator(imageset.shape, latent_dim, width), DCGANDiscriminator(imageset.shape, width)
            order_gen = torch.Generator().manual_seed(seed + 1)
            noise_gen = torch.Generator().manual_seed(seed + 2)
            fixed = torch.randn(64, latent_dim, generator=torch.Generator().manual_seed(seed + 3))
            opt_g = torch.optim.Adam(gen_net.parameters(), lr=lr, betas=(0.5, 0.999))
            opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.999))
            steps = len(imageset) // batch
            losses = {}
            bar = tqdm(total=epochs * steps, desc=f"train-generator {dataset}", unit="step", disable=not show_progress)
            for epoch in range(1, epochs + 1):
                order = torch.randperm(len(imageset), generator=order_gen)
                for s in range(steps):
                    real = imageset.images[order[s * batch:(s + 1) * batch]]
                    fake = gen_net(torch.randn(batch, latent_dim, generator=noise_gen))
                    ones, zeros = torch.ones(batch), torch.zeros(batch)
                    d_loss = (F.binary_cross_entropy_with_logits(disc(real), ones)
                              + F.binary_cross_entropy_with_logits(disc(fake.detach()), zeros))
                    opt_d.zero_grad()
                    d_loss.backward()
                    opt_d.step()
                    g_loss = F.binary_cross_entropy_with_logits(disc(fake), ones)
                    opt_g.zero_grad()
                    g_loss.backward()
                    opt_g.step()
                    losses = {"d_loss": float(d_loss.detach()), "g_loss": float(g_loss.detach())}
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, **{k: f"{v:.3f}" for k, v in losses.items()})
                if epoch % grid_every == 0 or epoch == epochs:
                    _write_grid(gen_net, fixed, out.with_name(f"{out.stem}-samples-epoch{epoch:03d}.png"))
            bar.close()
    finally:
        torch.set_num_threads(previous_threads)
    gen_net.eval()
    grid_path = out.with_name(f"{out.stem}-samples.png")
    meta = checkpoint.save(gen_net, out, training, {"final_losses": losses, "samples": grid_path.name})
    loaded = checkpoint.load(out)  # the grid is drawn by the stored (float16) weights, as users will load them
    _write_grid(loaded, fixed, grid_path)
    return meta


def _write_grid(gen_net, latents: torch.Tensor, path: Path) -> None:
    training = gen_net.training
    gen_net.eval()
    with torch.no_grad():
        Image.fromarray(sample_grid(gen_net(latents))).save(path)
    gen_net.train(training)
