"""One mechanism checks every field that names something: a rule per list of names.

The config (pydantic) and a command-line option reach the same rule, so they accept the same
names and say the same line about a wrong one.
"""

from __future__ import annotations

import pytest

from autoprune.config.loading import parse_config
from autoprune.config.names import BACKEND, DATA, IMPORTANCE, MODEL, SAMPLER, SEARCHER, NameRule
from autoprune.errors import ConfigError

RULES = [MODEL, DATA, BACKEND, SEARCHER, SAMPLER, IMPORTANCE]


def config_with(rule: NameRule, value: str) -> dict:
    section, field = rule.field.split(".")
    base = {"model": {"name": "mlp"}}
    return {**base, section: {**base.get(section, {}), field: value}}


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.field)
def test_a_wrong_name_is_the_same_one_line_from_a_config_and_from_an_option(rule):
    with pytest.raises(ConfigError) as from_option:
        rule.check("nosuch")
    with pytest.raises(ConfigError) as from_config:
        parse_config(config_with(rule, "nosuch"), source="exp.yaml")
    assert str(from_option.value) == f"{rule.field}: 'nosuch' is not allowed; allowed: {rule.allowed()}"
    assert str(from_config.value) == f"exp.yaml: {from_option.value}"


@pytest.mark.parametrize("rule", [BACKEND, SEARCHER, SAMPLER, IMPORTANCE], ids=lambda r: r.field)
def test_a_plug_in_reference_is_imported_when_checked(rule):
    message = f"{rule.field}: module 'plugins_for_tests' has no attribute 'Nope' (from 'plugins_for_tests:Nope')"
    with pytest.raises(ConfigError) as info:
        rule.check("plugins_for_tests:Nope")
    assert str(info.value) == message
    with pytest.raises(ConfigError) as info:
        parse_config(config_with(rule, "plugins_for_tests:Nope"), source="exp.yaml")
    assert str(info.value) == f"exp.yaml: {message}"


@pytest.mark.parametrize("rule", [MODEL, DATA], ids=lambda r: r.field)
def test_a_model_or_data_factory_is_accepted_unimported_and_a_half_reference_is_not(rule):
    assert rule.check("not_a_module_at_all:factory") == "not_a_module_at_all:factory"  # called when built
    with pytest.raises(ConfigError, match=r"is not allowed; allowed: "):
        rule.check("module:")


def test_registered_and_zoo_names_pass():
    assert [rule.check(n) for rule, n in zip(RULES, ["resnet20", "digits", "torch", "optuna", "tpe", "l1"])] == [
        "resnet20", "digits", "torch", "optuna", "tpe", "l1"]
    assert MODEL.check("minilm") == "minilm"
