"""``giabench tune``: each attack's search space, trials on data the threat model grants (never a private image),
the tuned parameters never worse than the default on the tuning data, a killed tuning resuming to the same trials,
and a suite that asks for a tuning run's parameters running them beside the defaults."""

import json
import textwrap

import pytest
import torch

from giabench import components, data, runner, search, suite, tuned, tuning
from giabench.app import cli
from giabench.checks import Param
from giabench.errors import ConfigError
from giabench.registry import attacks

SUITE = """
name: tiny-tune
defaults:
  dataset: mnist-sample
  model: {name: mlp, width: 32}
  selection: ordered
  attack: {name: ig, iterations: 20, tv: 0.0}
grid:
  defense: [none, {name: prune, fraction: 0.9}]
  seed: [0, 1, 2]
"""


def write(tmp_path, text=SUITE, name="tiny.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", sorted(attacks.names()))
def test_every_search_space_stays_inside_its_parameters_declared_ranges(name):
    factory = attacks.get(name)
    space = factory.search_space((3, 32, 32))
    search.check(name, space, factory.parameters)
    for key, dimension in space.items():  # the default may lie outside (tv 0 on a log scale); a tuned value may not
        low = dimension.options[0] if isinstance(dimension, search.Choice) else dimension.low
        components.attack(name, {key: low})


def test_a_search_space_outside_the_declared_parameters_is_refused():
    parameters = {"lr": Param("step", above=0)}
    with pytest.raises(ConfigError, match="'tv', which is not a parameter"):
        search.check("attack x", {"tv": search.Range(1e-3, 1.0)}, parameters)
    with pytest.raises(ConfigError, match="reaches 0"):
        search.check("attack x", {"lr": search.Range(0.0, 1.0)}, parameters)
    with pytest.raises(ConfigError, match="low < high"):
        search.Range(1.0, 0.1)


def test_a_tuning_pool_sets_the_private_images_aside_and_relabels_a_stand_in():
    victim = data.load("mnist-sample")
    stand_in = data.load("fmnist-sample")
    pool = data.pool(stand_in, [0, 3], victim)
    assert len(pool) == len(stand_in) - 2 and pool.classes == victim.classes and pool.mean == victim.mean
    assert int(pool.labels.max()) < victim.num_classes
    assert not any(torch.equal(image, stand_in.images[0]) for image in pool.images)
    with pytest.raises(ConfigError, match="pick a stand-in of that shape"):
        data.pool(data.load("cifar100-sample"), [], victim)


def test_trials_never_see_a_private_image_nor_a_private_seed():
    loaded = suite.expand({"name": "t", "defaults": {"dataset": "mnist-sample", "model": {"name": "mlp", "width": 32},
                                                     "attack": {"name": "ig", "iterations": 5}, "threat_model": "D",
                                                     "selection": "ordered"},
                           "grid": {"seed": [0, 1, 2, 3]}})
    env = runner.Environment()
    [setting], skipped = tuning.settings(loaded, env)
    assert not skipped and setting.data == "surrogate mnist-sample (16 images, the suite's 4 private ones set aside)"
    private = data.load("mnist-sample").images[:4]
    for cell in setting.cells_for({"lr": 0.5}, 3):
        assert cell.seed >= tuning.TUNING_SEED and cell.attack.params["lr"] == 0.5
        _, batches = runner.client_data(cell, env)
        index = data.sample_index(batches, cell.batch_size, cell.seed, cell.selection)
        assert not any(torch.equal(batches.images[i], p) for i in index for p in private)


def test_a_threat_model_without_surrogate_data_tunes_on_a_public_stand_in(tmp_path):
    loaded = suite.load(str(write(tmp_path)))
    chosen, _ = tuning.settings(loaded, runner.Environment())
    assert [s.data.split(" (")[0] for s in chosen] == ["public stand-in fmnist-sample"] * 2
    lonely = suite.expand({"name": "t", "defaults": {"dataset": "lfw-faces", "model": {"name": "mlp", "width": 8},
                                                     "attack": {"name": "ig", "iterations": 5}}})
    with pytest.raises(ConfigError, match="pass --stand-in"):
        tuning.settings(lonely, runner.Environment())


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory):
    """The tiny suite tuned for 3 trials of 2 batches, uninterrupted."""
    folder = tmp_path_factory.mktemp("tuned")
    loaded = suite.load(str(write(folder)))
    record = tuning.tune(loaded, folder / "out", runner.Environment(), trials=3, batches=2, quiet=True)
    return loaded, folder, record


def test_tuning_never_loses_to_the_default_on_its_own_data(tuned_run):
    _, folder, record = tuned_run
    assert tuned.load(folder / "out") == json.loads(json.dumps(record, default=str))
    entries = [s for s in record["settings"] if "tuned" in s]
    assert len(entries) == 2
    for entry in entries:
        assert entry["trials"] == 3 and entry["tuned_value"] >= entry["default_value"]
        assert set(entry["tuned"]) == {"lr", "tv"} and entry["data"].startswith("public stand-in")


def test_a_killed_tuning_resumes_to_the_same_trials(tuned_run, tmp_path, monkeypatch):
    loaded, _, record = tuned_run
    calls, real = [], runner.run_suite

    def dies_in_the_third_round(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "run_suite", dies_in_the_third_round)
    with pytest.raises(KeyboardInterrupt):
        tuning.tune(loaded, tmp_path / "out", runner.Environment(), trials=3, batches=2, quiet=True)
    monkeypatch.setattr(runner, "run_suite", real)
    resumed = tuning.tune(loaded, tmp_path / "out", runner.Environment(), trials=3, batches=2, quiet=True)
    keys = ("key", "tuned", "tuned_value", "default_value", "trials", "failed_trials")
    assert [{k: s.get(k) for k in keys} for s in resumed["settings"]] == \
        [{k: s.get(k) for k in keys} for s in record["settings"]]
    with pytest.raises(Exception, match="--batches 2"):
        tuning.tune(loaded, tmp_path / "out", runner.Environment(), trials=3, batches=3, quiet=True)


def test_a_suite_asks_for_the_tuned_parameters_beside_the_defaults(tuned_run, tmp_path, capsys):
    loaded, folder, record = tuned_run
    text = SUITE + f"tuned: {folder / 'out'}\n"
    with_tuned = suite.load(str(write(tmp_path, text, "with.yaml")))
    twins = [c for c in with_tuned.cells if c.id not in {d.id for d in loaded.cells}]
    tuned_params = {s["key"]: s["tuned"] for s in record["settings"]}
    won = {s["key"] for s in record["settings"] if s["status"] == "tuned"}
    assert won and len(twins) == sum(c.setting in won for c in loaded.cells)  # a kept default needs no twin
    for twin in twins:
        default = next(c for c in loaded.cells if c.seed == twin.seed and c.defense == twin.defense)
        assert {k: twin.attack.params[k] for k in ("lr", "tv")} == tuned_params[default.setting]
    assert cli.main(["run", str(tmp_path / "with.yaml"), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "tuned against default attacks, on the private batches" in printed
    table = (tmp_path / "run" / "tuning.csv").read_text()
    assert table.count("\n") == 3  # a header and both settings (a kept default with a gain of 0)
    assert "Tuned against default attacks" in (tmp_path / "run" / "leaderboard.html").read_text()


def test_a_broken_tuning_record_is_refused_with_the_suite_line(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tuned.json").write_text(json.dumps({"format": 1, "settings": [{"key": "x",
                                                                                       "tuned": {"lr": [1]}}]}))
    with pytest.raises(ConfigError, match=r"with\.yaml:11: .*settings\[0\]: tuned must map parameter names"):
        suite.load(str(write(tmp_path, SUITE + "tuned: bad\n", "with.yaml")))
    with pytest.raises(ConfigError, match="cannot read the tuning record"):
        suite.load(str(write(tmp_path, SUITE + "tuned: nowhere\n", "with.yaml")))


def test_the_command_refuses_an_unknown_attack_and_a_private_seed_range(tmp_path, capsys):
    path = write(tmp_path)
    assert cli.main(["tune", str(path), "--attacks", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "unknown attack 'nope'" in capsys.readouterr().err
    high = write(tmp_path, SUITE.replace("seed: [0, 1, 2]", "seed: [10000]"), "high.yaml")
    assert cli.main(["tune", str(high), "--out", str(tmp_path / "o")]) == 2
    assert "seeds must stay below 10000" in capsys.readouterr().err


def test_an_lpips_objective_scores_trials_by_minus_lpips_and_a_folder_keeps_its_objective(tmp_path):
    loaded = suite.load(str(write(tmp_path, SUITE.replace("defense: [none, {name: prune, fraction: 0.9}]",
                                                          "defense: none"))))
    record = tuning.tune(loaded, tmp_path / "out", runner.Environment(), trials=2, batches=2, quiet=True,
                         score="lpips")
    [entry] = record["settings"]
    assert record["objective"] == "lpips" and -1 <= entry["default_value"] <= entry["tuned_value"] <= 0
    with pytest.raises(Exception, match="--objective lpips"):
        tuning.tune(loaded, tmp_path / "out", runner.Environment(), trials=2, batches=2, quiet=True, score="psnr")
