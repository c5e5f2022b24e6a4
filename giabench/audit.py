"""giabench audit: how much a practitioner's own model leaks, under their protocol, batch sizes and defenses.

The model comes from an importable factory (``MODULE:FUNCTION``, no pickle) as the zoo model ``factory``; the
architecture picks the battery (``battery``), which runs as an ordinary suite in the run folder (resumable, the same
store), and ``report`` turns the cells into verdicts, one per threat model, weakest first: how many images of a batch
an attacker with that knowledge reconstructs above ``LEAK_DB`` PSNR, the worst case over the battery, batch sizes
and seeds. The generated suite file is written beside the results, so the audit can be rerun or extended with
``giabench run``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from giabench import protocols, threats
from giabench.errors import ConfigError

LEAK_DB = 25.0  # an image counts as reconstructed above this PSNR
BUDGETS = {  # attack iterations, seeds and utility rounds per budget
    "quick": {"seeds": [0], "ig": 50, "idlg": 50, "gias": 50, "restarts": 1, "rounds": 3},
    "standard": {"seeds": [0, 1], "ig": 500, "idlg": 300, "gias": 300, "restarts": 1, "rounds": 20},
    "thorough": {"seeds": [0, 1, 2, 3], "ig": 2000, "idlg": 1000, "gias": 1000, "restarts": 2, "rounds": 100},
}
INVERTIBLE = (nn.Conv2d, nn.Linear, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Flatten, nn.Identity)
GENERATORS = ("dcgan-mnist", "dcgan-patches")  # shipped priors, each for one image shape


def parameterized_layers(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """Leaf modules that hold parameters, in registration order (the forward order of sequential networks)."""
    return [(name, m) for name, m in net.named_modules() if not list(m.children()) and list(m.parameters(False))]


def rgap_obstacle(net: nn.Module) -> str | None:
    """Why R-GAP cannot invert ``net`` layer by layer (None when every leaf is a conv/linear layer or an
    invertible activation)."""
    for name, module in net.named_modules():
        if not list(module.children()) and not isinstance(module, INVERTIBLE):
            return f"layer {name} ({type(module).__name__}) is not invertible"
    return None


def generator_for(shape: tuple[int, ...]) -> str | None:
    """A shipped generator whose images have ``shape``."""
    from giabench.attacks.generators import WEIGHTS

    for name in GENERATORS:
        meta = json.loads((WEIGHTS / f"{name}.json").read_text(encoding="utf-8"))
        if tuple(meta["shape"]) == tuple(shape):
            return name
    return None


def parse_defenses(text: str) -> list[dict]:
    """``none,dp-sgd:noise_multiplier=1,prune:fraction=0.9`` -> defense configs (values read as YAML scalars)."""
    import yaml

    configs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, rest = item.partition(":")
        config = {"name": name}
        for assignment in filter(None, rest.split(";" if ";" in rest else ":")):
            key, sep, value = assignment.partition("=")
            if not sep or not key:
                raise ConfigError(f"--defenses: expected NAME:KEY=VALUE, got {item!r}")
            config[key] = yaml.safe_load(value)
        configs.append(config)
    if not configs:
        raise ConfigError("--defenses: name at least one defense (none for the undefended model)")
    return configs


def battery(net: nn.Module, shape: tuple[int, ...], protocol: dict, batch_sizes: list[int], budget: str
            ) -> tuple[list[dict], list[tuple[str, str]]]:
    """The attacks that apply to ``net`` as suite grid entries (attack, batch sizes, threat model), and those that
    do not, each with the reason."""
    spend = BUDGETS[budget]
    entries, skipped = [], []
    fedsgd = protocol["name"] == "fedsgd"
    layers = parameterized_layers(net)
    first = layers[0][1] if layers else None
    if isinstance(first, nn.Linear) and first.bias is not None:
        entries.append({"attack": "fc-invert", "batch_size": batch_sizes})
    else:
        what = type(first).__name__ if first is not None else "no parameterized layer"
        skipped.append(("fc-invert", f"the first layer is {what}, not fully connected with a bias"))
    obstacle = rgap_obstacle(net)
    if obstacle or not fedsgd or 1 not in batch_sizes:
        skipped.append(("rgap", obstacle or ("it inverts a FedSGD gradient" if not fedsgd else "it needs batch 1")))
    else:
        entries.append({"attack": "rgap", "batch_size": [1]})
    entries.append({"attack": {"name": "infer-labels", "method": "llg"}, "batch_size": batch_sizes})
    if 1 in batch_sizes:
        entries.append({"attack": {"name": "idlg", "iterations": spend["idlg"]}, "batch_size": [1]})
    else:
        skipped.append(("idlg", "its label rule needs batch 1"))
    entries.append({"attack": {"name": "ig", "iterations": spend["ig"], "restarts": spend["restarts"]},
                    "batch_size": batch_sizes})
    generator = generator_for(shape)
    if generator:
        entries.append({"attack": {"name": "gias", "generator": generator, "latent_iterations": spend["gias"],
                                   "finetune_iterations": spend["gias"]}, "batch_size": batch_sizes})
    else:
        skipped.append(("gias", f"no shipped generator makes {'x'.join(map(str, shape))} images "
                                f"(they make {', '.join(GENERATORS)}: 1x28x28 and 3x32x32)"))
    entries.append({"attack": {"name": "rtf", "bins": 64}, "batch_size": batch_sizes})
    return entries, skipped


def suite_document(name: str, dataset: str, model: dict, protocol: dict, defenses: list[dict], entries: list[dict],
                   budget: str) -> dict:
    """The suite the audit runs, as it is written to ``audit-suite.yaml``."""
    spend = BUDGETS[budget]
    return {
        "name": name,
        "description": f"giabench audit of {model['factory']} ({budget} budget)",
        "defaults": {"dataset": dataset, "model": model, "protocol": protocol, "selection": "random"},
        "grid": [{**entry, "defense": defenses, "seed": spend["seeds"]} for entry in entries],
        "utility": {"dataset": dataset, "model": model, "protocol": protocol if protocol["name"] == "fedavg" else
                    {"name": "fedavg", "epochs": 1, "batch_size": 0, "lr": 0.1},
                    "rounds": spend["rounds"], "clients": 4, "batch": 32, "defenses": defenses},
    }


def images_above(images: pd.DataFrame) -> pd.Series:
    """Per cell, how many of its images were reconstructed above LEAK_DB."""
    return images.assign(hit=images["psnr"] > LEAK_DB).groupby("cell")["hit"].sum()


def reconstructions(cells: pd.DataFrame) -> pd.DataFrame:
    """The finished cells of image-reconstruction attacks (label inference left out)."""
    return cells[(cells["status"] == "ok") & (cells["attack"] != "infer-labels")]


def _attack_words(row) -> str:
    params = json.loads(row["attack_params"]) if isinstance(row["attack_params"], str) else row["attack_params"]
    iterations = params.get("iterations") or params.get("latent_iterations")
    name = {"ig": "IG", "idlg": "iDLG", "gias": "GIAS", "rtf": "Robbing the Fed", "fc-invert": "linear-layer "
            "inversion", "rgap": "R-GAP"}.get(row["attack"], row["attack"])
    return f"{name}, {iterations:,} iterations" if iterations else name


def verdicts(cells: pd.DataFrame, images: pd.DataFrame) -> list[str]:
    """One line per threat model that an undefended cell ran under, weakest attacker first. An attacker has every
    attack of the threat models its capabilities cover; its line names the cell that reconstructs the most images
    above LEAK_DB (ties: the larger batch), or the best mean PSNR when none does; label inference is named on the
    line of its own (weakest) threat model."""
    done = cells[(cells["status"] == "ok") & (cells["defense"] == "none")]
    above = images_above(images)
    lines = []
    for letter, (title, granted) in threats.THREAT_MODELS.items():
        if letter not in set(done["threat_model"]):
            continue
        covered = done["threat_model"].map(lambda other, granted=granted: threats.THREAT_MODELS[other][1] <= granted)
        part = done[covered & (done["attack"] != "infer-labels")]
        labels = done[(done["threat_model"] == letter) & (done["attack"] == "infer-labels")]
        words = f"{title} ({letter})"
        if not part.empty:
            part = part.assign(hits=part["cell"].map(above).fillna(0).astype(int))
            worst = part.sort_values(["hits", "batch_size", "psnr"], ascending=False).iloc[0]
            b = int(worst["batch_size"])
            if worst["hits"]:
                words += (f": reconstructs {int(worst['hits'])} of {b} image{'s' * (b > 1)} of a batch of {b} above "
                          f"{LEAK_DB:g} dB PSNR ({_attack_words(worst)}).")
            else:
                best = part.sort_values("psnr", ascending=False).iloc[0]
                sizes = sorted(part["batch_size"].unique())
                words += (f": reconstructs no image above {LEAK_DB:g} dB PSNR at batch size{'s' * (len(sizes) > 1)} "
                          f"{', '.join(map(str, sizes))}; its best is "
                          f"{best['psnr']:.1f} dB mean PSNR at batch {int(best['batch_size'])} "
                          f"({_attack_words(best)}).")
        if not labels.empty:
            labels = labels.assign(known=labels["label_acc"] * labels["batch_size"])  # labels recovered per batch
            worst = labels.sort_values(["known", "batch_size"], ascending=False).iloc[0]
            words += (":" if part.empty else "") + (f" Labels: {worst['label_acc']:.0%} of a batch of "
                                                    f"{int(worst['batch_size'])} inferred (LLG).")
        lines.append(words)
    return lines


def defense_table(cells: pd.DataFrame, images: pd.DataFrame, utility: dict[str, dict]) -> pd.DataFrame:
    """Per defense setting: the worst case left over the battery (largest fraction of a batch above LEAK_DB, best
    mean PSNR) and its cost (epsilon of one update and of the utility run, with delta and adjacency; bytes; the
    utility run's test accuracy)."""
    done, above = reconstructions(cells), images_above(images)
    rows = []
    for (defense, params), part in done.groupby(["defense", "defense_params"], sort=False):
        hits = part["cell"].map(above).fillna(0) / part["batch_size"]
        worst = part.loc[part["psnr"].idxmax()]
        key = defense_key(defense, params)
        rows.append({"defense": key, "worst_fraction_above": float(hits.max()),
                     "worst_psnr": float(worst["psnr"]), "worst_attack": _attack_words(worst),
                     "epsilon": float(part["epsilon"].max()), "delta": float(part["delta"].max()),
                     "adjacency": str(part["adjacency"].iloc[0] or ""), "bytes": int(part["bytes"].max()),
                     "accuracy": utility.get(key, {}).get("accuracy", math.nan),
                     "run_epsilon": utility.get(key, {}).get("run_epsilon", math.nan)})
    return pd.DataFrame(rows)


def defense_key(name: str, params) -> str:
    """The defense setting as the report labels it: its name and the parameters that differ from the defaults."""
    from giabench.leaderboard.report import label

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
    """Worst-case mean PSNR over the battery per defense and ``by`` (batch_size or local_steps)."""
    done = reconstructions(cells)
    done = done.assign(defense_key=[defense_key(d, p) for d, p in zip(done["defense"], done["defense_params"],
                                                                        strict=True)])
    return done.groupby(["defense_key", by])["psnr"].max().reset_index()


def local_steps(row) -> int:
    """Gradient steps in one client update: 1 under FedSGD, epochs x ceil(B / b) under FedAvg (b = 0: the batch)."""
    params = json.loads(row["protocol_params"]) if isinstance(row["protocol_params"], str) else row["protocol_params"]
    if row["protocol"] != "fedavg":
        return 1
    epochs, local_batch = int(params.get("epochs", 1)), int(params.get("batch_size", 0))
    return protocols.fedavg_steps(int(row["batch_size"]), epochs, local_batch)


def check_model(net: nn.Module, shape: tuple[int, ...], num_classes: int, where: str) -> None:
    """A forward pass on two images of ``shape`` must give (2, num_classes) logits."""
    try:
        with torch.no_grad():
            out = net.eval()(torch.zeros(2, *shape))
    except Exception as exc:  # noqa: BLE001 -- any failure of the user's forward pass is reported in one line
        raise ConfigError(f"{where}: the forward pass on {tuple(shape)} images fails ({type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"{where}: the output for 2 images is {got}, expected (2, {num_classes}): one logit per "
                          f"class of the data")


def write_report(out: Path, suite_file: Path, lines: list[str], skipped: list[tuple[str, str]],
                 defenses: pd.DataFrame, figures: dict[str, str | None], utility_note: str) -> Path:
    """``audit.md``: the verdicts, what did not apply and why, the defense table and the plots."""
    text = ["# giabench audit", "", f"Suite: `{suite_file.name}` (rerun or extend it with `giabench run "
            f"{suite_file} --out {out}`). Every cell, with its reconstructions: `leaderboard.html`.", "",
            f"## Verdicts (an image counts as reconstructed above {LEAK_DB:g} dB PSNR)", ""]
    text += [f"- {line}" for line in lines] or ["- no attack finished"]
    text += ["", "## Attacks that do not apply", ""]
    text += [f"- {attack}: {reason}" for attack, reason in skipped] or ["- none: every attack of the battery ran"]
    text += ["", "## Defenses: worst case left and cost", "", utility_note, "",
             f"| defense | worst batch: images above {LEAK_DB:g} dB | worst mean PSNR | by | epsilon (one update) | "
             "epsilon (utility run) | delta | adjacency | bytes | accuracy |", "|---" * 10 + "|"]
    for _, row in defenses.iterrows():
        private = math.isfinite(row["epsilon"])
        text.append(f"| {row['defense']} | {row['worst_fraction_above']:.0%} | {row['worst_psnr']:.1f} dB | "
                    f"{row['worst_attack']} | {row['epsilon']:.3g} | {row['run_epsilon']:.3g} | "
                    f"{f'{row.delta:.0e}' if private else '-'} | {row['adjacency'] or '-'} | {row['bytes']:,} | "
                    f"{row['accuracy']:.3f} |")
    for title, name in (("Leakage against batch size", "leakage_batch.svg"),
                        ("Leakage against local steps", "leakage_steps.svg")):
        if figures.get(name):
            (out / name).write_text(figures[name], encoding="utf-8")
            text += ["", f"## {title}", "", f"![{title}]({name})"]
    path = out / "audit.md"
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path


def dump_suite(document: dict, path: Path) -> None:
    """The suite as plain YAML (no anchors), readable and editable by hand."""
    import yaml

    class Plain(yaml.SafeDumper):
        def ignore_aliases(self, data) -> bool:
            return True

    path.write_text(yaml.dump(document, Dumper=Plain, sort_keys=False), encoding="utf-8")
