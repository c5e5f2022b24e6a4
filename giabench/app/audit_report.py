"""The audit's findings: verdicts per threat model, the defense table, leakage curves and ``audit.md``.

An image counts as reconstructed above ``LEAK_DB`` PSNR, a sequence of text at ROUGE-1 ``LEAK_ROUGE1`` or more (an
audit runs on one kind of data: ``Measure`` says which). Each verdict names, for one threat model, the cell that
reconstructs the most images (sequences) of a batch (ties: the larger batch), the worst case over the battery, batch
sizes and seeds; attacks are named as they describe themselves (``Attack.describe``)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from giabench import components, protocols, threats
from giabench.leaderboard import dp_audit as audit_tables
from giabench.leaderboard.report import label
from giabench.metrics import LEAK_DB
from giabench.registry import attacks
from giabench.text_metrics import LEAK_ROUGE1


@dataclass(frozen=True)
class Measure:
    """How an audit scores its data: the cell column, its unit, what one sample is, when one counts as rebuilt."""

    column: str
    unit: str
    sample: str
    threshold: str

    @classmethod
    def of(cls, cells: pd.DataFrame) -> Measure:
        if "rouge1" in cells and pd.to_numeric(cells["rouge1"], errors="coerce").notna().any():
            return cls("rouge1", "ROUGE-1", "sequence", f"at ROUGE-1 {LEAK_ROUGE1:g} or more")
        return IMAGES

    def figure(self, value: float) -> str:
        return f"{value:.1f} dB" if self.column == "psnr" else f"ROUGE-1 {value:.1f}"


IMAGES = Measure("psnr", "dB PSNR", "image", f"above {LEAK_DB:g} dB PSNR")


def images_above(images: pd.DataFrame) -> pd.Series:
    """Per cell, how many of its images were reconstructed above LEAK_DB (its sequences at ROUGE-1 >= LEAK_ROUGE1)."""
    rouge = images["rouge1"] if "rouge1" in images else pd.Series(float("nan"), index=images.index)
    hit = (images["psnr"] > LEAK_DB) | (pd.to_numeric(rouge, errors="coerce") >= LEAK_ROUGE1)
    return images.assign(hit=hit).groupby("cell")["hit"].sum()


def label_only(cells: pd.DataFrame) -> pd.Series:
    """Whether each cell's attack infers labels only (family ``label``)."""
    return cells["attack"].map(lambda name: attacks.get(name).family == "label")


def reconstructions(cells: pd.DataFrame) -> pd.DataFrame:
    """The finished cells of image-reconstruction attacks (label inference left out)."""
    return cells[(cells["status"] == "ok") & ~label_only(cells)]


def _attack_words(row) -> str:
    """The attack of a cell as the attack describes itself: its title and budget."""
    params = json.loads(row["attack_params"]) if isinstance(row["attack_params"], str) else row["attack_params"]
    return components.attack(row["attack"], params).build().describe()


def verdicts(cells: pd.DataFrame, images: pd.DataFrame) -> list[str]:
    """One line per threat model that an undefended cell ran under, weakest attacker first. An attacker has every
    attack of the threat models its capabilities cover; its line names the cell that reconstructs the most images
    above LEAK_DB (ties: the larger batch), or the best mean PSNR when none does; label inference is named on the
    line of its own (weakest) threat model."""
    done = cells[(cells["status"] == "ok") & (cells["defense"] == "none")]
    above, measure = images_above(images), Measure.of(cells)
    lines = []
    for letter, (title, granted) in threats.THREAT_MODELS.items():
        if letter not in set(done["threat_model"]):
            continue
        covered = done["threat_model"].map(lambda other, granted=granted: threats.THREAT_MODELS[other][1] <= granted)
        part = done[covered & ~label_only(done)]
        labels = done[(done["threat_model"] == letter) & label_only(done)]
        words = f"{title} ({letter})"
        if not part.empty:
            part = part.assign(hits=part["cell"].map(above).fillna(0).astype(int))
            worst = part.sort_values(["hits", "batch_size", measure.column], ascending=False).iloc[0]
            b, sample = int(worst["batch_size"]), measure.sample
            if worst["hits"]:
                words += (f": reconstructs {int(worst['hits'])} of {b} {sample}{'s' * (b > 1)} of a batch of {b} "
                          f"{measure.threshold} ({_attack_words(worst)}).")
            else:
                best = part.sort_values(measure.column, ascending=False).iloc[0]
                sizes = sorted(part["batch_size"].unique())
                words += (f": reconstructs no {sample} {measure.threshold} at batch size{'s' * (len(sizes) > 1)} "
                          f"{', '.join(map(str, sizes))}; its best is "
                          f"{measure.figure(best[measure.column])} mean at batch {int(best['batch_size'])} "
                          f"({_attack_words(best)}).")
        if not labels.empty:
            labels = labels.assign(known=labels["label_acc"] * labels["batch_size"])  # labels recovered per batch
            worst = labels.sort_values(["known", "batch_size"], ascending=False).iloc[0]
            words += (":" if part.empty else "") + (f" Labels: {worst['label_acc']:.0%} of a batch of "
                                                    f"{int(worst['batch_size'])} inferred ({_attack_words(worst)}).")
        lines.append(words)
    return lines


def defense_table(cells: pd.DataFrame, images: pd.DataFrame, utility: dict[str, dict]) -> pd.DataFrame:
    """Per defense setting: the worst case left over the battery (largest fraction of a batch above LEAK_DB, best
    mean PSNR) and its cost (epsilon of one update and of the utility run, with delta and adjacency; bytes; the
    utility run's test accuracy)."""
    done, above, measure = reconstructions(cells), images_above(images), Measure.of(cells)
    rows = []
    for (defense, params), part in done.groupby(["defense", "defense_params"], sort=False):
        hits = part["cell"].map(above).fillna(0) / part["batch_size"]
        worst = part.loc[part[measure.column].idxmax()]
        key = defense_key(defense, params)
        rows.append({"defense": key, "worst_fraction_above": float(hits.max()),
                     "worst_psnr": float(worst[measure.column]), "worst_attack": _attack_words(worst),
                     "epsilon": float(part["epsilon"].max()), "delta": float(part["delta"].max()),
                     "adjacency": str(part["adjacency"].iloc[0] or ""), "bytes": int(part["bytes"].max()),
                     "accuracy": utility.get(key, {}).get("accuracy", math.nan),
                     "run_epsilon": utility.get(key, {}).get("run_epsilon", math.nan)})
    return pd.DataFrame(rows)


def defense_key(name: str, params) -> str:
    """The defense setting as the report labels it: its name and the parameters that differ from the defaults."""
    return label("defenses", name, params if isinstance(params, str) else json.dumps(params or {}))


def utility_costs(path: Path) -> dict[str, dict]:
    """Per defense setting (``defense_key``): test accuracy and epsilon over the whole utility run, from its CSV;
    empty when there is none."""
    if not path.is_file():
        return {}
    frame = pd.read_csv(path)
    return {defense_key(row["defense"], row["defense_params"]): {"accuracy": float(row["accuracy"]),
                                                                  "run_epsilon": float(row["epsilon"])}
            for _, row in frame.iterrows()}


def leakage_curves(cells: pd.DataFrame, by: str) -> pd.DataFrame:
    """Worst-case mean PSNR (ROUGE-1 for text) over the battery per defense and ``by`` (batch_size or
    local_steps), in a column ``leakage``."""
    done, column = reconstructions(cells), Measure.of(cells).column
    done = done.assign(defense_key=[defense_key(d, p) for d, p in zip(done["defense"], done["defense_params"],
                                                                        strict=True)])
    return done.groupby(["defense_key", by])[column].max().rename("leakage").reset_index()


def local_steps(row) -> int:
    """Gradient steps in one client update: 1 under FedSGD, epochs x ceil(B / b) under FedAvg (b = 0: the batch)."""
    params = json.loads(row["protocol_params"]) if isinstance(row["protocol_params"], str) else row["protocol_params"]
    if row["protocol"] != "fedavg":
        return 1
    epochs, local_batch = int(params.get("epochs", 1)), int(params.get("batch_size", 0))
    return protocols.fedavg_steps(int(row["batch_size"]), epochs, local_batch)


def write_report(out: Path, suite_file: Path, lines: list[str], skipped: list[tuple[str, str]],
                 defenses: pd.DataFrame, figures: dict[str, str | None], utility_note: str,
                 measure: Measure = IMAGES) -> Path:
    """``audit.md``: the verdicts, what did not apply and why, the defense table and the plots."""
    text = ["# giabench audit", "", f"Suite: `{suite_file.name}` (rerun or extend it with `giabench run "
            f"{suite_file} --out {out}`). Every cell, with its reconstructions: `leaderboard.html`.", "",
            f"## Verdicts ({'an' if measure.sample == 'image' else 'a'} {measure.sample} counts as reconstructed "
            f"{measure.threshold})", ""]
    text += [f"- {line}" for line in lines] or ["- no attack finished"]
    text += ["", "## Attacks that do not apply", ""]
    text += [f"- {attack}: {reason}" for attack, reason in skipped] or ["- none: every attack of the battery ran"]
    text += ["", "## Defenses: worst case left and cost", "", utility_note, "",
             f"| defense | worst batch: {measure.sample}s {measure.threshold} | worst mean {measure.unit} | by | "
             "epsilon (one update) | epsilon (utility run) | delta | adjacency | bytes | accuracy |", "|---" * 10 + "|"]
    for _, row in defenses.iterrows():
        private = math.isfinite(row["epsilon"])
        text.append(f"| {row['defense']} | {row['worst_fraction_above']:.0%} | {measure.figure(row['worst_psnr'])} | "
                    f"{row['worst_attack']} | {row['epsilon']:.3g} | {row['run_epsilon']:.3g} | "
                    f"{f'{row.delta:.0e}' if private else '-'} | {row['adjacency'] or '-'} | {row['bytes']:,} | "
                    f"{row['accuracy']:.3f} |")
    audited = audit_tables.read_summary(out)
    if audited is not None:
        text += ["", "## Privacy audit of the DP settings", "",
                 "Each DP setting's noise against its accountant (release count, sensitivity, noise variance) and the "
                 "empirical lower bound on its first release's epsilon (`privacy_calibration.csv` has every check):",
                 "", "```", audit_tables.terminal(audited), "```"]
    for title, name in (("Leakage against batch size", "leakage_batch.svg"),
                        ("Leakage against local steps", "leakage_steps.svg")):
        if figures.get(name):
            (out / name).write_text(figures[name], encoding="utf-8")
            text += ["", f"## {title}", "", f"![{title}]({name})"]
    path = out / "audit.md"
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path
