"""Robbing the Fed: exactly recovered images against the samples that sat alone in a bin.

For random batches of cifar10-sample (B = 8 by default) and each bin count, the imprinted LeNet's FedSGD update is
inverted and scored. Printed per batch: the singletons computed from the bins actually drawn (and how many of them
are in the top cumulative bin), the ``exact`` count giabench reports (targets with a reconstruction above 40 dB, each
recovered image matched to its best target), and for contrast the count that minimum-total-MSE matching gives when
the unfilled slots are black images (giabench 0.1's scoring).

    .venv/bin/python benchmarks/rtf_counts.py [--batch 8] [--bins 64 256] [--seeds 0 1 2 3 4]
"""

from __future__ import annotations

import argparse

import torch

from giabench import data, metrics, models, protocols
from giabench.attacks.analytic import RobbingTheFed
from giabench.contracts import ServerView
from giabench.registry import defenses
from giabench.runner import surrogate


def one_batch(imageset, batch: int, bins: int, seed: int) -> dict:
    index = data.sample_index(imageset, batch, seed, "random")
    x, y = imageset.images[index], imageset.labels[index]
    attack = RobbingTheFed(bins=bins)
    model = attack.prepare(models.build("lenet", {}, imageset, "untrained", seed).eval(), imageset.shape,
                           surrogate(imageset, index), torch.Generator().manual_seed(seed * 1000 + 3))
    protocol = protocols.build("fedsgd", {}, model)
    client = defenses.get("none")(protocol)
    view = ServerView(model, protocol, client.share(x, y, torch.Generator()), {}, imageset.shape,
                      imageset.num_classes, batch)
    recon = attack.reconstruct(view, client.simulate, torch.Generator())
    drawn = torch.searchsorted(attack.cutoffs, x.flatten(1) @ attack.query_vector)  # K = the top bin
    alone = torch.bincount(drawn, minlength=bins + 1)[drawn] == 1
    exact = metrics.score(recon.images, None, x, y, with_lpips=False, recovered=recon.recovered)[0]["exact"]
    black = torch.where(recon.recovered[:, None, None, None], recon.images, torch.zeros_like(recon.images))
    old = metrics.score(black, None, x, y, with_lpips=False)[0]["exact"]
    return {"seed": seed, "bins": bins, "singletons": int(alone.sum()),
            "in_top_bin": int((alone & (drawn == bins)).sum()), "exact": exact, "exact_min_total_mse_black": old}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cifar10-sample")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--bins", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    torch.set_num_threads(1)
    imageset = data.load(args.dataset)
    print("bins seed singletons in_top_bin exact exact(0.1 scoring)")
    for bins in args.bins:
        rows = [one_batch(imageset, args.batch, bins, seed) for seed in args.seeds]
        for r in rows:
            print(f"{bins:4d} {r['seed']:4d} {r['singletons']:10d} {r['in_top_bin']:10d} {r['exact']:5d} "
                  f"{r['exact_min_total_mse_black']:18d}")
        mean = {k: sum(r[k] for r in rows) / len(rows) for k in ("singletons", "exact", "exact_min_total_mse_black")}
        print(f"{bins:4d} mean {mean['singletons']:10.1f} {'':10s} {mean['exact']:5.1f} "
              f"{mean['exact_min_total_mse_black']:18.1f}")


if __name__ == "__main__":
    main()
