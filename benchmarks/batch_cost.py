"""What a large-batch attack costs: seconds per batch and peak memory of SPEAR, the Cocktail Party Attack and the
linear-layer inversion on the MLP's FedSGD update (mnist-5k, random batches, one thread).

Each (attack, batch) runs in a fresh process, so its peak resident memory is its own: printed is the peak above the
process's resident size just before the attack (data, model and message already in memory), and the images above
40 dB and 25 dB. CPA on ``cifarcnn`` (``--model cifarcnn --dataset cifar10-sample``) also prints the cosine of the
recovered embeddings to the true inputs of fc1 (each matched to its best).

    .venv/bin/python benchmarks/batch_cost.py [--model mlp --width 256] [--batches 8 16 64] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def resident_kib() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() // 1024


def one(attack: str, model_name: str, width: int, dataset: str, batch: int, seed: int) -> dict:
    """Run one attack on one batch here and return its figures (called in the child process)."""
    import torch
    from torch import nn

    from giabench import data, metrics, models, protocols
    from giabench.attacks.cpa import CocktailParty, layer_inputs
    from giabench.contracts import ServerView
    from giabench.registry import attacks, defenses

    torch.set_num_threads(1)
    imageset = data.load(dataset)
    x, y = data.sample(imageset, batch, seed, "random")
    params = {"width": width} if model_name == "mlp" else {}
    model = models.build(model_name, params, imageset, "untrained", seed).eval()
    protocol = protocols.build("fedsgd", {}, model)
    client = defenses.get("none")(protocol)
    view = ServerView(model, protocol, client.share(x, y, torch.Generator()), {}, imageset.shape,
                      imageset.num_classes, batch, y)
    attacker = attacks.get(attack)(labels="known")
    before = resident_kib()
    start = time.perf_counter()
    recon = attacker.reconstruct(view, None, torch.Generator().manual_seed(seed))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    per = metrics.score(recon.images, None, x, y, with_lpips=False)[1]
    row = {"attack": attack, "model": model_name, "batch": batch, "seed": seed, "seconds": seconds,
           "peak_mib": max(peak - before, 0) / 1024, "exact": sum(p["psnr"] > 40 for p in per),
           "above25": sum(p["psnr"] > 25 for p in per)}
    if attack == "cpa" and not recon.extra.get("first_layer", True):
        sources, layer, _ = CocktailParty().embeddings(view, torch.Generator().manual_seed(seed))
        with torch.no_grad():
            truth = layer_inputs(model, layer, x).double()
        cosine = nn.functional.cosine_similarity(sources[:, None], truth[None], dim=2)
        row["embedding_cosine"] = float(cosine.max(dim=0).values.mean())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attacks", nargs="+", default=["fc-invert", "spear", "cpa"])
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16, 64])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one(**json.loads(args.child))))
        return
    print("attack     model    B  seed  seconds  peak MiB  >40dB  >25dB  embedding cos")
    for attack in args.attacks:
        for batch in args.batches:
            if attack == "spear" and batch > 24:
                print(f"{attack:10s} {args.model:6s} {batch:3d}     -  sampling needs 2^(B-1) submatrices: skipped")
                continue
            for seed in args.seeds:
                job = {"attack": attack, "model_name": args.model, "width": args.width, "dataset": args.dataset,
                       "batch": batch, "seed": seed}
                done = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True,
                                      text=True, check=True)
                r = json.loads(done.stdout.strip().splitlines()[-1])
                cos = f"{r['embedding_cosine']:.3f}" if "embedding_cosine" in r else "-"
                print(f"{attack:10s} {args.model:6s} {batch:3d} {seed:5d} {r['seconds']:8.2f} {r['peak_mib']:9.1f} "
                      f"{r['exact']:6d} {r['above25']:6d}  {cos}", flush=True)


if __name__ == "__main__":
    main()
