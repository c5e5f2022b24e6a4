"""An Opacus client inside a real Flower run against giabench's own dp-sgd client at the same setting.

Per block b, the example app (examples/flower_app/app.py) runs one round of Flower's FedAvg under its simulation
engine with 3 clients on the dataset's images [6b, 6b + 6): client 2 holds 4 digits and trains with Opacus
(``PrivacyEngine.make_private``, Poisson rate q = 1/2, clip 1, noise multiplier z, one epoch = 2 steps, lr 0.1), and
the LeakageStrategy attacks its update with fc-invert and IG. giabench then simulates that client itself on the same
4 digits from the same global weights (round 1: the app's untrained MLP): dp-sgd with the same clip, z and q on 2
whole-batch FedAvg steps, attacked by the same attacks with the same labels. Each side draws its own Poisson samples
and noise, fresh per block (the app's ``--seed b``; giabench's generator seed b). Printed per
attack: mean PSNR (sd) over the blocks for Opacus-in-Flower and for giabench, and their difference; and the epsilons
(giabench's accountant, and Opacus' from the client's reply).

    .venv/bin/python benchmarks/flower_dp_level.py --blocks 10 [--dataset mnist-5k] [--ig-iterations 200] [--z 1.0]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from giabench import data, metrics, models, protocols
from giabench.contracts import ServerView
from giabench.registry import attacks, defenses
from giabench.store import Store

APP = Path(__file__).resolve().parents[1] / "examples" / "flower_app" / "app.py"


def in_flower(block: int, args, out: Path) -> dict:
    """PSNR per attack of the Opacus client's update, and the epsilons stored beside it."""
    subprocess.run([sys.executable, str(APP), "--dataset", args.dataset, "--first", str(6 * block), "--rounds", "1",
                    "--prune-client", "-1", "--seed", str(block), "--ig-iterations", str(args.ig_iterations),
                    "--noise-multiplier", str(args.z), "--out", str(out)], check=True, capture_output=True, timeout=900)
    cells = Store(out).cells()
    private = cells[[json.loads(c)["flower"]["client"] == 2 for c in cells["config"]]]
    extra = json.loads(private["extra"].iloc[0])
    return {**dict(zip(private["attack"], private["psnr"].astype(float), strict=True)),
            "epsilon": float(private["epsilon"].iloc[0]), "opacus": extra["client_epsilon"]}


def in_giabench(block: int, args) -> dict:
    """PSNR per attack of giabench's dp-sgd client on the same digits and weights."""
    imageset = data.load(args.dataset)
    x, y = imageset.images[6 * block + 2: 6 * block + 6], imageset.labels[6 * block + 2: 6 * block + 6]
    model = models.build("mlp", {"width": 64}, imageset, "untrained", 0)
    model.eval()
    protocol = protocols.build("fedavg", {"epochs": 2, "batch_size": 0, "lr": 0.1}, model)
    client = defenses.get("dp-sgd")(protocol, clip=1.0, noise_multiplier=args.z, sample_rate=0.5)
    message = client.share(x, y, torch.Generator().manual_seed(block))
    view = ServerView(model, protocol, message, dict(client.public), imageset.shape, imageset.num_classes, len(x), y)
    out = {}
    for name, params in (("fc-invert", {}), ("ig", {"iterations": args.ig_iterations})):
        recon = attacks.get(name)(**params).reconstruct(view, client.simulate, torch.Generator().manual_seed(1))
        out[name] = metrics.score(recon.images, recon.labels, x, y, with_lpips=False)[0]["psnr"]
    return {**out, "epsilon": client.cost()["epsilon"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--ig-iterations", type=int, default=200)
    parser.add_argument("--z", type=float, default=1.0, help="the noise multiplier")
    args = parser.parse_args()
    torch.set_num_threads(1)
    flower, ours = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for block in range(args.blocks):
            flower.append(in_flower(block, args, Path(tmp) / str(block)))
            ours.append(in_giabench(block, args))
            print(f"block {block}: flower {flower[-1]}  giabench {ours[-1]}", flush=True)
    for attack in ("fc-invert", "ig"):
        a, b = [r[attack] for r in flower], [r[attack] for r in ours]
        print(f"{attack:9s}  Opacus in Flower {statistics.mean(a):6.2f} dB (sd {statistics.stdev(a):.2f})   "
              f"giabench dp-sgd {statistics.mean(b):6.2f} dB (sd {statistics.stdev(b):.2f})   "
              f"difference {statistics.mean(a) - statistics.mean(b):+.2f} dB over {len(a)} blocks of 4 images")
    print(f"epsilon (delta 1e-5, add-remove, one round): giabench {ours[0]['epsilon']:.4f}, recorder "
          f"{flower[0]['epsilon']:.4f}, Opacus {flower[0]['opacus']:.4f}")


if __name__ == "__main__":
    main()
