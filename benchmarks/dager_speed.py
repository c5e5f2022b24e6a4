"""Seconds per batch of DAGER on the GPT-2-like decoder (width 768, 2 blocks, untrained, austen's 12-token sentences,
FedSGD), with the decoder's last-position shortcut (``Gpt2.last_second_query_input``: block 1 run for the new
position only) and with the full forward pass of every grown prefix, one thread, one batch per batch size.

    .venv/bin/python benchmarks/dager_speed.py [--batch-sizes 1,8,32] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import torch

from giabench import data, models, protocols, text_metrics
from giabench.attacks.dager import Dager
from giabench.contracts import ServerView


class FullPass(Dager):
    """DAGER scoring each grown prefix with the model's full forward pass (the path before the shortcut)."""

    def _layer2(self, net, sequences, basis, last=False):
        distance = super()._layer2(net, sequences, basis)
        return distance[:, -1] if last else distance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = data.load("austen")
    print("| B | shortcut: s | full pass: s | speed-up | ROUGE-1 (both) |\n|---|---|---|---|---|")
    for batch in map(int, args.batch_sizes.split(",")):
        model = models.build("gpt2", {}, dataset, "untrained", 0)
        protocol = protocols.build("fedsgd", {}, model)
        index = data.sample_index(dataset, batch, args.seed)
        x, y = dataset.images[index], dataset.labels[index]
        view = ServerView(model, protocol, protocol.update(x, y), {}, dataset.shape, dataset.num_classes, batch)
        seconds, scores = [], []
        for attack in (Dager(), FullPass()):
            start = time.perf_counter()
            recon = attack.reconstruct(view, None, torch.Generator().manual_seed(0))
            seconds.append(time.perf_counter() - start)
            scores.append(text_metrics.score(recon.images, None, x, y, dataset.texts)[0]["rouge1"])
        print(f"| {batch} | {seconds[0]:.1f} | {seconds[1]:.1f} | {seconds[1] / seconds[0]:.1f}x | "
              f"{scores[0]:.1f} / {scores[1]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
