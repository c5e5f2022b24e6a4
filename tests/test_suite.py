import textwrap

import pytest

from giabench import suite
from giabench.errors import ConfigError


def _write(tmp_path, text):
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_packaged_suites_expand():
    assert {"default", "smoke"} <= set(suite.packaged_suites())
    for name in suite.packaged_suites():  # every packaged suite, the benchmark reproductions included
        loaded = suite.load(name)
        assert loaded.cells and len({c.id for c in loaded.cells}) == len(loaded.cells)


def test_grid_is_a_cartesian_product_with_defaults_filled(tmp_path):
    loaded = suite.load(_write(tmp_path, """
        name: t
        defaults: {model: {name: mlp, width: 8}, attack: {name: ig, iterations: 5}}
        grid:
          defense: [none, {name: prune, fraction: 0.5}]
          seed: [0, 1, 2]
    """))
    assert len(loaded.cells) == 6
    cell = loaded.cells[0].config
    assert cell["attack"] == {"name": "ig", "iterations": 5, "lr": 0.1, "tv": 1e-4, "restarts": 1, "labels": "known"}
    assert cell["model"] == {"name": "mlp", "state": "untrained", "mode": "eval", "width": 8, "depth": 1,
                            "init": "pytorch"}


def test_grid_entry_without_name_updates_the_default(tmp_path):
    loaded = suite.load(_write(tmp_path, """
        defaults: {attack: {name: ig, iterations: 5}}
        grid: {attack: [{tv: 0.5}, {iterations: 7}]}
    """))
    assert [(c.config["attack"]["iterations"], c.config["attack"]["tv"]) for c in loaded.cells] == [(5, 0.5), (7, 1e-4)]


def test_cell_ids_depend_on_the_config_only():
    a, b = suite.load("smoke"), suite.load("smoke")
    assert [c.id for c in a.cells] == [c.id for c in b.cells]


def test_unknown_attack_names_the_known_ones_and_the_line(tmp_path):
    path = _write(tmp_path, """
        name: t
        grid:
          seed: [0]
          attack: [ig, deepleak]
    """)
    known = ("cpa, dager, dlg, fc-invert, fedavg-invert, fedleak, fishing, ggl, gias, gifd, gradinversion, "
             "hyperfl-invert, idlg, ig")
    with pytest.raises(ConfigError, match=rf"s.yaml:5: unknown attack 'deepleak'; known: {known}"):
        suite.load(path)


def test_malformed_yaml_names_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r"s.yaml:4: malformed YAML: expected ',' or ']'"):
        suite.load(_write(tmp_path, "name: t\ngrid:\n  seed: [0, 1\n  attack: ig\n"))


@pytest.mark.parametrize("text,message", [
    ("grid: {attack: [{name: ig, iters: 3}]}",
     r":1: attack ig: unknown parameter 'iters'; known: iterations, labels, lr, restarts, tv"),
    ("grid: {attack: [{name: ig, iterations: many}]}", r"attack ig.iterations: expected int"),
    ("defaults: {batch_size: two}", r":1: batch_size must be int"),
    ("grid: {colour: [red]}", r"unknown cell field 'colour'"),
    ("grdi: {}", r"unknown suite key 'grdi'"),
    ("defaults: {model: {name: lenet, mode: test}}", r"mode must be one of eval, train"),
])
def test_bad_fields_are_named(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        suite.load(_write(tmp_path, text))


def test_unknown_suite_and_missing_file():
    with pytest.raises(ConfigError, match="unknown suite 'nope'; packaged: .*default.*smoke"):
        suite.load("nope")
    with pytest.raises(ConfigError, match="no such file"):
        suite.load("missing.yaml")


def test_threat_model_defaults_to_the_weakest_that_the_attack_needs(tmp_path):
    loaded = suite.load(_write(tmp_path, """
        grid:
          - attack: [{name: dlg}, {name: ig}, {name: ig, labels: "inferred:llg+"}]
          - attack: ig
            protocol: {name: fedavg, epochs: 2}
    """))
    assert [c.config["threat_model"] for c in loaded.cells] == ["A", "B", "D", "C"]


def test_threat_model_refusal_names_the_missing_capability(tmp_path):
    path = _write(tmp_path, "defaults: {attack: ig, threat_model: A}\n")
    with pytest.raises(ConfigError, match=r"attack ig needs labels \(the client's labels\); priors .*which threat "
                                          r"model A \(Eavesdropper\) does not grant; the weakest that does is B"):
        suite.load(path)
    path = _write(tmp_path, "defaults: {attack: {name: ig, labels: 'inferred:llg+'}, threat_model: C}\n")
    with pytest.raises(ConfigError, match=r"needs surrogate-data"):
        suite.load(path)
