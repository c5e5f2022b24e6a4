import json

import pandas as pd
import pytest
import torch

from giabench import utility
from giabench.errors import ConfigError, GiabenchError
from giabench.leaderboard import tradeoff
from giabench.utility_config import load_config

CONFIG = """
dataset: mnist-sample
model: {name: mlp, width: 8}
protocol: fedsgd
clients: 2
rounds: 2
batch: 4
test_fraction: 0.4
defenses:
  - {name: sketch, kind: srht, ratio: 0.1}
  - {name: dp-sgd, noise_multiplier: 1.0}
  - {name: diff2}
  - {name: hidenseek, density: 0.2, upload: signs}
  - {name: secagg, clients: 2}
"""


def test_utility_rows_price_every_defense_against_the_undefended_reference(tmp_path):
    path = tmp_path / "u.yaml"
    path.write_text(CONFIG)
    frame = utility.run(load_config(path), tmp_path, show_progress=False)
    assert list(frame["defense"]) == ["none", "sketch", "dp-sgd", "diff2", "hidenseek", "secagg"]
    assert frame["accuracy"].between(0, 1).all() and (frame["wall_per_round_s"] > 0).all()
    rows = frame.set_index("defense")
    d = rows.loc["none", "bytes_per_round"]
    assert rows.loc["sketch", "bytes_per_round"] < 0.2 * d and rows.loc["hidenseek", "bytes_per_round"] < 0.01 * d
    assert rows.loc["dp-sgd", "epsilon"] < 100 and rows.loc["diff2", "epsilon"] < 100
    assert rows.loc["none", "epsilon"] == float("inf")
    assert json.loads(rows.loc["sketch", "defense_params"])["ratio"] == 0.1  # the cells' JSON form, defaults filled
    assert (tmp_path / "utility.csv").is_file()


def test_same_config_same_accuracy(tmp_path):
    path = tmp_path / "u.yaml"
    path.write_text(CONFIG.split("defenses:")[0])
    a, b = (utility.run(load_config(path), tmp_path / str(i), show_progress=False) for i in range(2))
    assert a["accuracy"].tolist() == b["accuracy"].tolist()


@pytest.mark.parametrize("text, message", [
    ("rounds: 0\n", "rounds must be a whole number >= 1"),
    ("color: red\n", "unknown field 'color'"),
    ("defenses: [{density: 0.1}]\n", "needs a name"),
    ("- a\n", "mapping at the top level"),
    ("", "is empty; give at least the defenses"),  # an empty file and an empty mapping alike
    ("{}\n", "is empty; give at least the defenses"),
])
def test_bad_utility_configs_are_named(tmp_path, text, message):
    path = tmp_path / "u.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_utility_epsilon_composes_over_every_round(tmp_path, gaussian_epsilon):
    path = tmp_path / "u.yaml"
    path.write_text(CONFIG.split("defenses:")[0].replace("rounds: 2", "rounds: 3") + """defenses:
  - {name: dp-sgd, noise_multiplier: 1.0}
  - {name: dp-sgd, noise_multiplier: 1.0, adjacency: replace-one}
  - {name: sketch, kind: srht, ratio: 0.1, noise: post, noise_multiplier: 2.0}
""")
    frame = utility.run(load_config(path), tmp_path, show_progress=False)
    eps = frame["epsilon"].tolist()
    assert eps[1] == pytest.approx(gaussian_epsilon(1.0, 3, 1e-5), rel=1e-6)
    assert eps[2] == pytest.approx(gaussian_epsilon(0.5, 3, 1e-5), rel=1e-6)
    assert eps[3] == pytest.approx(gaussian_epsilon(2.0, 3, 1e-5), rel=1e-6)
    assert frame["adjacency"].tolist()[1:] == ["add-remove", "replace-one", "add-remove"]
    assert (frame["threads"] == 1).all()


def test_tradeoff_takes_the_strongest_applicable_attack_per_defense_setting():
    cells = pd.DataFrame([
        {"defense": "none", "defense_params": "{}", "dataset": "d", "model": "m", "batch_size": 1, "attack": a,
         "attack_params": "{}", "psnr": p, "ssim": 0.1, "lpips": 0.5, "epsilon": float("inf"), "bytes": 10,
         "status": s}
        for a, p, s in [("ig", 20.0, "ok"), ("dlg", 12.0, "ok"), ("rgap", None, "not-applicable")]])
    util = pd.DataFrame([{"defense": "none", "defense_params": "{}", "dataset": d, "model": "m", "accuracy": acc,
                          "bytes_per_round": 10, "wall_per_round_s": 1.0, "epsilon": float("inf"), "delta": 0.0,
                          "adjacency": ""} for d, acc in (("d", 0.9), ("other", 0.5))])
    table = tradeoff.table(cells, util)
    assert len(table) == 1 and table.loc[0, "attack"] == "ig" and table.loc[0, "accuracy"] == 0.9
    elsewhere = tradeoff.table(cells.assign(model="m2"), util)  # a utility row of another model does not join
    assert len(elsewhere) == 1 and pd.isna(elsewhere.loc[0, "accuracy"])


def test_a_utility_file_without_the_columns_is_refused_by_name(tmp_path):
    bad = tmp_path / "u.csv"
    bad.write_text("defense,b\nnone,2\n")
    with pytest.raises(GiabenchError, match="missing column 'defense_params'"):
        tradeoff.read_utility(bad)


def test_a_suite_utility_section_is_trained_once_and_joined_by_the_report(tmp_path):
    from giabench.app import cli

    suite = tmp_path / "s.yaml"
    suite.write_text("defaults: {dataset: mnist-sample, model: {name: mlp, width: 8}, attack: {name: ig, "
                     "iterations: 1}}\ngrid: {defense: [none, {name: dp-sgd}]}\nutility:\n" +
                     "\n".join("  " + line for line in CONFIG.split("defenses:")[0].strip().splitlines()) +
                     "\n  defenses: [{name: dp-sgd}]\n")
    out = tmp_path / "run"
    assert cli.main(["run", str(suite), "--out", str(out), "--quiet"]) == 0
    trained = (out / "utility" / "utility.csv").stat().st_mtime_ns
    joined = pd.read_csv(out / "privacy_utility.csv")
    assert set(joined["defense"]) == {"none", "dp-sgd"} and joined["accuracy"].notna().all()
    assert cli.main(["run", str(suite), "--out", str(out), "--quiet"]) == 0
    assert (out / "utility" / "utility.csv").stat().st_mtime_ns == trained  # same configuration: reused


def test_a_bad_suite_utility_section_names_its_line(tmp_path):
    from giabench import suite

    path = tmp_path / "s.yaml"
    path.write_text("name: t\nutility:\n  rounds: 0\n")
    with pytest.raises(ConfigError, match=r"s.yaml:2: utility: rounds must be a whole number >= 1"):
        suite.load(str(path))
    path.write_text("name: t\nutility:\n  defenses: [{name: dp-sgd, clip: 0}]\n")
    with pytest.raises(ConfigError, match="clip must be > 0"):
        suite.load(str(path))


def test_label_counts_are_hyperfl_s_groups():
    part = {"name": "label-skew", "classes": 3, "share": 0.8, "train": 600, "test": 600}
    assert utility.label_counts(part, 10, 0, 600) == [172, 172, 172] + [12] * 7
    mains = [[c for c, n in enumerate(utility.label_counts(part, 10, k, 600)) if n > 12] for k in range(6)]
    assert mains == [[0, 1, 2], [2, 3, 4], [4, 5, 6], [6, 7, 8], [0, 8, 9], [0, 1, 2]]
    assert sum(utility.label_counts({**part, "share": 0.5}, 10, 3, 101)) == 101


def test_a_label_skewed_split_gives_disjoint_shards_and_local_tests_with_the_same_mix():
    from giabench import data

    images = data.load("mnist-5k")
    part = {"name": "label-skew", "classes": 3, "share": 0.8, "train": 100, "test": 50}
    tests, shards = utility.split(images, 5, 0.2, 0, part)
    assert len(tests) == len(shards) == 5
    everything = torch.cat(shards)
    assert len(everything) == 500 and len(set(everything.tolist())) == 500
    held = set(tests[0].tolist()) | set().union(*(set(t.tolist()) for t in tests))
    assert not held & set(everything.tolist())  # local tests come from the held-out images only
    for k in range(5):
        train_counts = torch.bincount(images.labels[shards[k]], minlength=10).tolist()
        test_counts = torch.bincount(images.labels[tests[k]], minlength=10).tolist()
        assert train_counts == utility.label_counts(part, 10, k, 100)
        assert test_counts == utility.label_counts(part, 10, k, 50)
    with pytest.raises(ConfigError, match="needs more than the .* training images of class 0"):
        utility.split(images, 40, 0.2, 0, {**part, "train": 300})


def test_label_skewed_training_scores_each_client_on_its_local_test(tmp_path):
    path = tmp_path / "u.yaml"
    path.write_text(CONFIG.split("defenses:")[0].replace("mnist-sample", "{name: mnist-5k}") +
                    "partition: {name: label-skew, train: 40, test: 20}\ndefenses: [hyperfl]\n")
    frame = utility.run(load_config(path), tmp_path, show_progress=False)
    assert list(frame["defense"]) == ["none", "hyperfl"] and frame["accuracy"].between(0, 1).all()
    assert (frame["dataset"] == "mnist-5k").all()


@pytest.mark.parametrize("text, message", [
    ("partition: dirichlet\n", "partition must be one of iid, label-skew"),
    ("partition: {name: label-skew, alpha: 0.1}\n", "unknown field 'alpha'; known: classes, share, train, test"),
    ("partition: {name: label-skew, share: 1.5}\n", "partition share must be a number in"),
    ("partition: {name: label-skew, classes: 0}\n", "partition classes must be a whole number >= 1"),
    ("dataset: {split: train}\n", "dataset must be a name or a mapping with 'name'"),
])
def test_bad_partitions_and_datasets_are_named(tmp_path, text, message):
    path = tmp_path / "u.yaml"
    path.write_text(text + "defenses: [none]\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path)
