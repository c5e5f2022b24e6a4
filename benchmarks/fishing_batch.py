"""Fishing: the caught image at batch size B against the same attack on that image alone.

Per seed, a random batch of B images; the server fishes (``giabench.attacks.fishing``) with the batch size known and
surrogate data = the rest of the dataset; the FedSGD update is inverted and the recovered image scored against the
private image it matches best (the caught one). Then the same fished model, the same attack and the same seeds run
on a batch of that image alone: the figure of merit is PSNR(B) - PSNR(1) (Wen et al.'s claim: the attack does not
depend on B). Also printed: the caught image's share of the squared norm of the body's gradient, from the private
images' own gradients (the ground truth of the isolation, which the attacker never sees), and how many images carry
more than 1 % of it. Class fishing aims at the class of one batch image, drawn by the seed (``--target batch``), or
at a fixed class.

    .venv/bin/python benchmarks/fishing_batch.py --dataset mnist-5k --model mlp --state trained:300 --mode feature \
        --batch 64 256 --seeds 0 1 2 3 4 5 6 7 8 9 [--iterations 1000] [--target batch|CLASS]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from giabench import data, metrics, models, protocols
from giabench.attacks.fishing import Fishing, last_linear
from giabench.contracts import ServerView
from giabench.registry import defenses
from giabench.runner import surrogate


def attempt(attack, model, imageset, x, y, seed: int) -> tuple[float | None, dict, int, float]:
    """PSNR of the best recovered image against the private image it matches (None: nothing was caught), the
    attack's extra, the index of that image and the seconds spent."""
    protocol = protocols.build("fedsgd", {}, model)
    client = defenses.get("none")(protocol)
    view = ServerView(model, protocol, client.share(x, y, torch.Generator().manual_seed(seed)), {}, imageset.shape,
                      imageset.num_classes, len(x))
    start = time.perf_counter()
    recon = attack.reconstruct(view, client.simulate, torch.Generator().manual_seed(seed))
    wall = time.perf_counter() - start
    if not recon.recovered.any():
        return None, recon.extra, -1, wall
    _, rows, _ = metrics.score(recon.images, None, x, y, with_lpips=False, recovered=recon.recovered)
    hit = max((r for r in rows if recon.recovered[r["matched"]]), key=lambda r: r["psnr"])
    return hit["psnr"], recon.extra, hit["image"], wall


def isolation(model, x, y) -> tuple[float, int, int]:
    """The largest share of the body's squared gradient norm that one private image carries, its index and the
    number of images above 1 %."""
    protocol = protocols.build("fedsgd", {}, model)
    head = last_linear(model)[0]
    norms = []
    for k in range(len(x)):
        update = protocol.update(x[k:k + 1], y[k:k + 1])
        norms.append(sum(float((v ** 2).sum()) for key, v in update.items() if not key.startswith(head + ".")))
    share = torch.tensor(norms) / max(sum(norms), 1e-30)
    return float(share.max()), int(share.argmax()), int((share > 0.01).sum())


def one_seed(imageset, args, batch: int, seed: int) -> dict:
    index = data.sample_index(imageset, batch, seed, "random")
    x, y = imageset.images[index], imageset.labels[index]
    target = int(y[seed % batch]) if args.target == "batch" else int(args.target)
    attack = Fishing(mode=args.mode, target_class=target, dummies=args.dummies, iterations=args.iterations,
                     restarts=args.restarts)
    broadcast = models.build(args.model, {}, imageset, args.state, seed).eval()
    fished = attack.prepare(broadcast, imageset.shape, surrogate(imageset, index),
                            torch.Generator().manual_seed(seed), batch)
    share, top, above = isolation(fished, x, y)
    psnr_b, extra, caught, wall = attempt(attack, fished, imageset, x, y, seed)
    row = {"batch": batch, "seed": seed, "target_class": target, "in_class": int((y == target).sum()),
           "share": share, "images_above_1pct": above, "psnr_batch": psnr_b, "wall_s": wall,
           "caught_kind": extra.get("caught_class"), "caught_is_top": caught == top, "fished": attack.fished}
    if psnr_b is not None:  # None when the caught image alone does not take the bait (a blend matched it)
        row["psnr_alone"] = attempt(attack, fished, imageset, x[caught:caught + 1], y[caught:caught + 1], seed)[0]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--state", default="trained:300")
    parser.add_argument("--mode", default="feature", choices=("class", "feature"))
    parser.add_argument("--batch", type=int, nargs="+", default=[64])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--restarts", type=int, default=1)
    parser.add_argument("--dummies", type=int, default=0, help="dummy images (0: the attack's default)")
    parser.add_argument("--target", default="batch", help="'batch' (a batch image's class, by seed) or a class")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    imageset = data.load(args.dataset)
    print(f"{args.dataset} {args.model} {args.state} mode {args.mode}, IG {args.iterations} iterations x "
          f"{args.restarts}, 1 thread")
    print("    B seed class n_class share >1% kind   PSNR(B) PSNR(1)   diff")
    rows = []
    for batch in args.batch:
        done = [one_seed(imageset, args, batch, seed) for seed in args.seeds]
        rows += done
        for r in done:
            diff = r["psnr_batch"] - r["psnr_alone"] if r.get("psnr_alone") is not None else float("nan")
            print(f"{batch:5d} {r['seed']:4d} {r['target_class']:5d} {r['in_class']:7d} {r['share']:5.3f} "
                  f"{r['images_above_1pct']:3d} {r['caught_kind'] or '-':6s} {r['psnr_batch'] or float('nan'):7.2f} "
                  f"{r.get('psnr_alone') or float('nan'):7.2f} {diff:+6.2f}")
        caught = [r for r in done if r.get("psnr_alone") is not None]
        diffs = torch.tensor([r["psnr_batch"] - r["psnr_alone"] for r in caught])
        within = int((diffs >= -3).sum())
        print(f"{batch:5d} mean over {len(done)} seeds: caught {len(caught)}, PSNR(B) "
              f"{sum(r['psnr_batch'] for r in caught) / max(len(caught), 1):.2f}, PSNR(1) "
              f"{sum(r['psnr_alone'] for r in caught) / max(len(caught), 1):.2f}, diff {float(diffs.mean()):+.2f} "
              f"(sd {float(diffs.std()):.2f}), within 3 dB {within}/{len(done)}, isolation share "
              f"{sum(r['share'] for r in done) / len(done):.3f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
