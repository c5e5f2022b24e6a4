"""Defense frontiers: every strength axis names valid settings, ``sweep: true`` expands a defense along it in a suite
and a utility file, the utility run picks its training configuration on the validation split (never the test split),
and a frontier compares each point's worst case over the same attacks."""

import json
import textwrap

import pandas as pd
import pytest

from giabench import components, suite, utility
from giabench.errors import ConfigError
from giabench.leaderboard import frontiers
from giabench.registry import defenses
from giabench.utility_config import config_from_mapping


@pytest.mark.parametrize("name", sorted(n for n in defenses.names() if defenses.get(n).strength is not None))
def test_every_point_of_a_strength_axis_is_a_valid_setting(name):
    axis = defenses.get(name).strength
    assert len(axis.points) >= 4
    protocol = components.protocol("fedsgd", {})
    settings = [components.defense(name, point, protocol, 16).params for point in axis.points]
    assert len({json.dumps(s, sort_keys=True) for s in settings}) == len(settings)


def test_a_sweep_expands_a_defense_along_its_axis_keeping_its_other_parameters(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent("""
        name: s
        defaults: {dataset: mnist-sample, model: {name: mlp, width: 8}, attack: fc-invert}
        grid:
          defense: [none, {name: dp-sgd, clip: 2.0, sweep: true}]
    """))
    cells = suite.load(str(path)).cells
    assert [c.defense.params.get("noise_multiplier") for c in cells] == [None, 0.3, 1.0, 3.0, 10.0]
    assert {c.defense.params.get("clip") for c in cells[1:]} == {2.0}
    path.write_text(path.read_text().replace("dp-sgd, clip: 2.0", "none"))
    with pytest.raises(ConfigError, match=r"s\.yaml:5: defense none: it declares no strength axis"):
        suite.load(str(path))
    path.write_text(path.read_text().replace("{name: none, sweep: true}", "{name: prune, sweep: 3}"))
    with pytest.raises(ConfigError, match="sweep must be true"):
        suite.load(str(path))


UTILITY = {"dataset": "mnist-sample", "model": {"name": "mlp", "width": 8}, "protocol": "fedsgd", "clients": 2,
           "rounds": 2, "batch": 4, "test_fraction": 0.3, "validation": 0.2,
           "tune": {"server_lr": [0.05, 1.0], "clip": [0.5, 2.0]},
           "defenses": [{"name": "dp-sgd", "sweep": True}, {"name": "prune", "fraction": 0.9}]}


def test_the_validation_split_is_apart_from_the_test_split_and_the_clients():
    cfg = config_from_mapping(UTILITY, "utility")
    imageset = utility._imageset(cfg)
    tests, shards = utility.split(imageset, 2, 0.3, 0, None, 0.2)
    held = set(utility.held_out(imageset, 0.3, 0, 0.2).tolist())
    assert len(held) == round(0.2 * 14) and not held & set(tests[0].tolist())
    assert not held & {i for shard in shards for i in shard.tolist()}


def test_the_utility_run_keeps_the_training_configuration_of_highest_validation_accuracy():
    cfg = config_from_mapping(UTILITY, "utility")
    assert len(cfg.defenses) == 5  # four swept DP-SGD points and pruning
    dp, prune = cfg.defenses[0], cfg.defenses[-1]
    assert len(utility.variants(cfg, dp)) == 4 and len(utility.variants(cfg, prune)) == 2  # pruning has no clip
    row = utility.tuned_train(cfg, dp)
    tried = {json.dumps(chosen, sort_keys=True): utility.train(config, tuned, cfg.validation)["validation_accuracy"]
             for chosen, config, tuned in utility.variants(cfg, dp)}
    assert tried[row["tuned"]] == max(tried.values()) and row["variants"] == 4
    assert row["defense_params"] == dp.params  # the declared setting, so that it joins the attacked cells
    with pytest.raises(ConfigError, match="tune clip must be a non-empty list of numbers"):
        config_from_mapping({**UTILITY, "tune": {"clip": []}}, "utility")


def _cells(rows):
    frame = pd.DataFrame(rows, columns=["defense", "defense_params", "attack", "psnr", "seed"])
    return frame.assign(cell=[f"c{i}" for i in range(len(frame))], status="ok", attack_params="{}",
                        dataset="mnist-sample", model="mlp", model_params="{}", protocol="fedsgd",
                        protocol_params="{}", batch_size=1)


def test_a_frontier_takes_each_point_s_worst_case_over_the_attacks_that_ran_at_every_point():
    prune = [json.dumps({"fraction": f}) for f in (0.5, 0.9, 0.99)]
    rows = [("none", "{}", "ig", 30.0, 0), ("none", "{}", "rtf", 80.0, 0),
            ("prune", prune[2], "ig", 12.0, 0), ("prune", prune[0], "ig", 20.0, 0), ("prune", prune[1], "ig", 15.0, 0),
            ("prune", prune[0], "rtf", 60.0, 0)]  # rtf ran at one point only: it does not enter the frontier
    cells = _cells(rows)
    images = pd.DataFrame({"cell": cells["cell"], "image": 0, "psnr": cells["psnr"]})
    utility_rows = pd.DataFrame({"defense": ["none", "prune"], "defense_params": ["{}", prune[1]],
                                 "accuracy": [0.9, 0.8], "epsilon": [float("inf")] * 2, "adjacency": ["", ""]})
    table = frontiers.table(cells, images, utility_rows)
    assert table["point"].tolist() == ["no defense", "fraction=0.5", "fraction=0.9", "fraction=0.99"]
    assert table["psnr"].tolist() == [30.0, 20.0, 15.0, 12.0] and set(table["attack"]) == {"ig"}
    assert table["accuracy"].iloc[0] == 0.9 and table["accuracy"].iloc[2] == 0.8 and table["accuracy"].isna().sum() == 2
    one_point = _cells([("prune", prune[0], "ig", 20.0, 0)])
    assert frontiers.table(one_point, images).empty


def test_describe_names_a_defense_s_axis_and_an_attack_s_search_space(capsys):
    from giabench.app import cli

    assert cli.main(["describe", "dp-sgd"]) == 0 and cli.main(["describe", "ig"]) == 0
    printed = capsys.readouterr().out
    assert "strength axis (sweep: true), weakest first: noise_multiplier=0.3; noise_multiplier=1.0" in printed
    assert "searched by giabench tune: lr in [0.001, 1] log, tv in [1e-07, 1] log" in printed


def test_a_frontier_without_utility_rows_draws_no_accuracy_plot_but_its_leakage_table_stands():
    from giabench.leaderboard import plots

    prune = [json.dumps({"fraction": f}) for f in (0.5, 0.9)]
    cells = _cells([("none", "{}", "ig", 30.0, 0), ("prune", prune[0], "ig", 20.0, 0),
                    ("prune", prune[1], "ig", 15.0, 0)])
    images = pd.DataFrame({"cell": cells["cell"], "image": 0, "psnr": cells["psnr"]})
    table = frontiers.table(cells, images)
    assert len(table) == 3 and table["accuracy"].isna().all()
    assert plots.frontiers(table, "accuracy", "psnr", "t") is None
    assert plots.frontiers(table, "epsilon_training", "accuracy", "t") is None
