"""Typed components: every parameter of giabench's attacks and defenses is documented with its range, the range is
what validation enforces, a suite validates each component once, and the runner builds each once per cell."""

import functools
import math

import pytest

from giabench import components, federation, runner, suite
from giabench.errors import ConfigError
from giabench.registry import attacks, defenses

OWN = {"attacks": "giabench.attacks", "defenses": "giabench.defenses"}
FEDSGD = components.protocol("fedsgd", {})


def own(registry, kind):
    return [name for name in registry.names() if registry.get(name).__module__.startswith(OWN[kind])]


def resolve(kind: str, name: str, params: dict):
    if kind == "attacks":
        return components.attack(name, params)
    return components.defense(name, params, FEDSGD, 4)


def outside(param, default):
    """A value of ``default``'s type just outside ``param``'s range."""
    if param.choices:
        return "not-one-of-them"
    cast = int if isinstance(default, int) and not isinstance(default, bool) else float
    if param.at_least is not None:
        return cast(param.at_least - 1 if cast is int else param.at_least - 0.5)
    if param.above is not None:
        return cast(param.above)
    if param.at_most is not None:
        return cast(param.at_most + 1)
    return cast(param.below)


@pytest.mark.parametrize("kind,registry", [("attacks", attacks), ("defenses", defenses)])
def test_every_parameter_is_documented_with_one_line(kind, registry):
    for name in own(registry, kind):
        declared = registry.get(name).parameters
        assert set(declared) == set(registry.defaults(name)), name
        for key, param in declared.items():
            assert param.doc and "\n" not in param.doc and len(param.doc) <= 160, (name, key)


@pytest.mark.parametrize("kind,registry", [("attacks", attacks), ("defenses", defenses)])
def test_defaults_lie_in_their_ranges_and_every_range_refuses_a_value_outside(kind, registry):
    for name in own(registry, kind):
        defaults = registry.defaults(name)
        assert resolve(kind, name, {}).params == defaults
        for key, param in registry.get(name).parameters.items():
            if not param.rule:
                continue
            bad = outside(param, defaults[key])
            with pytest.raises(ConfigError, match=f"{key} must be") as caught:
                resolve(kind, name, {key: bad})
            assert caught.value.field == key, (name, key)


def test_a_declared_range_reads_as_the_error_says_it():
    from giabench.checks import Param

    assert Param("", at_least=1).rule == ">= 1"
    assert Param("", above=0).rule == "> 0"
    assert Param("", above=0, at_most=1).rule == "in (0, 1]"
    assert Param("", at_least=0, below=1).rule == "in [0, 1)"
    assert Param("", choices=("a", "b")).rule == "one of a, b"
    assert Param("").rule == "" and Param("").accepts(math.nan)


def test_a_defense_is_checked_against_the_protocol_and_batch_it_serves():
    with pytest.raises(ConfigError, match="needs protocol fedsgd"):
        components.defense("diff2", {}, components.protocol("fedavg", {}), 4)
    with pytest.raises(ConfigError, match="at least one image per client"):
        components.defense("secagg", {"clients": 4}, FEDSGD, 2)
    with pytest.raises(ConfigError, match="trains in a fixed order"):
        components.defense("hidenseek", {}, components.protocol("fedavg", {"shuffle": True}), 4)


def test_a_cell_holds_resolved_components_and_its_config_is_their_mappings(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("defaults: {dataset: mnist-sample, model: {name: mlp, width: 8}, attack: {name: ig, "
                    "iterations: 2}, defense: {name: dp-sgd, clip: 2}}\n")
    cell = suite.load(str(path)).cells[0]
    assert cell.attack == components.attack("ig", {"iterations": 2})
    assert cell.defense.params == {**defenses.defaults("dp-sgd"), "clip": 2.0}
    assert cell.config["defense"] == {"name": "dp-sgd", **cell.defense.params}
    assert cell.config["model"] == {"name": "mlp", "state": "untrained", "mode": "eval", "width": 8, "depth": 1,
                                    "init": "pytorch"}


def _count(monkeypatch, registry, name, counts):
    cls = registry.get(name)
    original = cls.__init__

    @functools.wraps(original)  # the signature stays the constructor's (the registry reads its parameters)
    def counted(self, *args, **kwargs):
        counts[name] = counts.get(name, 0) + 1
        original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__init__", counted)


def test_the_runner_builds_each_component_once_per_cell(tmp_path, monkeypatch):
    path = tmp_path / "s.yaml"
    path.write_text("defaults: {dataset: mnist-sample, model: {name: mlp, width: 8}, attack: {name: ig, "
                    "iterations: 2}}\ngrid: {defense: [none, {name: dp-sgd}], seed: [0, 1]}\n")
    loaded = suite.load(str(path))
    counts: dict[str, int] = {}
    for registry, name in ((attacks, "ig"), (defenses, "none"), (defenses, "dp-sgd")):
        _count(monkeypatch, registry, name, counts)
    runner.run_suite(loaded, tmp_path / "run", runner.Environment(), show_progress=True)
    assert counts == {"ig": 4, "none": 2, "dp-sgd": 2}  # 4 cells: one attack and one defense each


def test_a_suite_constructs_each_attack_setting_once_to_read_its_needs(tmp_path, monkeypatch):
    path = tmp_path / "s.yaml"
    path.write_text("defaults: {dataset: mnist-sample, model: {name: mlp, width: 8}, attack: {name: ig, "
                    "iterations: 2}}\ngrid: {defense: [none, {name: prune}], seed: [0, 1, 2]}\n")
    counts: dict[str, int] = {}
    _count(monkeypatch, attacks, "ig", counts)
    _count(monkeypatch, defenses, "prune", counts)
    assert len(suite.load(str(path)).cells) == 6
    assert counts == {"ig": 1}  # the defenses are checked without constructing them


def test_stateful_defenses_override_only_their_own_steps():
    """DIFF2, HideNseek, HyperFL (and any defense) reuse the round loop; they override the client they train with
    and the server's step, nothing else."""
    for name in defenses.names():
        kind = defenses.get(name).federation
        assert kind.round is federation.Federation.round and kind.collect is federation.Federation.collect, name
