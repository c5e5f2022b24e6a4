"""The text attacks' table from run folders: per setting ROUGE-1 with its 95 % interval (a bootstrap over cells),
ROUGE-2, token accuracy, exact sequences per batch and seconds per batch, as markdown.

    python benchmarks/text_table.py runs/text-dager runs/text-optimization runs/text-variants
"""

from __future__ import annotations

import argparse

from giabench.leaderboard import tables, text
from giabench.leaderboard.report import label
from giabench.store import Store


def rows(folder: str) -> list[str]:
    cells, images = tables.cells(folder), Store(folder, create=False).images()
    settings = text.table(cells[cells["status"] == "ok"], images)
    lines = []
    for _, s in settings.sort_values(["model_params", "attack", "defense", "batch_size"]).iterrows():
        lines.append(" | ".join([
            label("attacks", s["attack"], s["attack_params"]), label("defenses", s["defense"], s["defense_params"]),
            label("models", s["model"], s["model_params"]), label("protocols", s["protocol"], s["protocol_params"]),
            str(int(s["batch_size"])), f"{s['rouge1']:.1f} [{s['rouge1_lo']:.1f}, {s['rouge1_hi']:.1f}]",
            f"{s['rouge2']:.1f}", f"{s['token_acc']:.3f}", f"{s['exact']:.2f}", f"{s['wall_s']:.1f}",
            str(int(s["cells"]))]))
    return [f"| {line} |" for line in lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+")
    args = parser.parse_args()
    print("| attack | defense | model | protocol | B | ROUGE-1 [95 %] | ROUGE-2 | token acc | exact per batch | "
          "s per batch | batches |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for folder in args.folders:
        print("\n".join(rows(folder)))


if __name__ == "__main__":
    main()
