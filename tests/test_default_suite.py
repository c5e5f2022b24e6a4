"""The embedded default run is the product's front page: every attack family against every registered defense,
each defense setting of the grid priced by the suite's utility section."""

import json

from giabench import suite
from giabench.registry import attacks, defenses


def test_every_attack_family_and_every_attack_runs():
    loaded = suite.load("default")
    names = {c.config["attack"]["name"] for c in loaded.cells}
    assert names == set(attacks.names())
    assert {attacks.get(n).family for n in names} == {"optimization", "generative", "analytic", "label"}


def test_every_registered_defense_meets_several_attacks():
    loaded = suite.load("default")
    for name in defenses.names():
        met = {c.config["attack"]["name"] for c in loaded.cells if c.config["defense"]["name"] == name}
        assert len(met) >= 2, (name, met)
    families = {attacks.get(c.config["attack"]["name"]).family for c in loaded.cells
                if c.config["defense"]["name"] == "dp-sgd"}
    assert families == {"optimization", "generative", "analytic", "label"}


def test_the_utility_section_prices_every_defense_setting_of_the_grid():
    loaded = suite.load("default")
    priced = {json.dumps(d.config, sort_keys=True) for d in loaded.utility.defenses}  # resolved as the cells' are
    grid = {json.dumps(c.config["defense"], sort_keys=True) for c in loaded.cells}
    assert grid - priced == {json.dumps({"name": "none"})}  # the undefended reference row is always trained
