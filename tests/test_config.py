"""The experiment config: defaults, overrides, and one-line errors that name field and value."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from autoprune.config.loading import load_config, parse_config
from autoprune.config.schema import ExperimentConfig, dump_config
from autoprune.config.settings import library_settings
from autoprune.errors import AutopruneError, ConfigError

DEMO = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "demo.yaml"


def write(tmp_path: Path, text: str, name: str = "experiment.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def config_error(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides or [])
    message = str(info.value)
    assert "\n" not in message
    return message


MINIMAL = "model: {name: resnet20}\n"


def test_minimal_config_gets_every_default(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.name == "experiment" and cfg.seed == 0
    assert cfg.output_dir == "runs/experiment"
    assert cfg.model.name == "resnet20" and cfg.model.checkpoint is None and cfg.model.ignore == []
    assert (cfg.data.name, cfg.data.data_dir, cfg.data.val_fraction) == ("fashion_mnist", None, 0.1)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr, cfg.train.weight_decay, cfg.train.augment) == (15, 128, 0.2, 5e-4, True)
    assert (cfg.proxy.bn_batches, cfg.proxy.bn_batch_size, cfg.proxy.val_samples) == (8, 64, 1000)
    lat = cfg.latency
    assert (lat.backend, lat.batch_size, lat.threads, lat.warmup, lat.rounds, lat.rel_ci) == ("torch", 1, 2, 5, 15, 0.03)
    assert (cfg.budget.metric, cfg.budget.target, cfg.budget.target_ms) == ("latency", 0.5, None)
    assert (cfg.reward.kind, cfg.reward.penalty, cfg.reward.exponent) == ("hard", 2.0, -0.07)
    pr = cfg.pruning
    assert (pr.importance, pr.round_to, pr.max_ratio, pr.drop_blocks, pr.iterative_steps) == ("l1", "auto", 0.8, True, 1)
    s = cfg.search
    assert (s.searcher, s.episodes, s.sampler, s.storage, s.study, s.workers, s.params) == ("optuna", 150, "tpe", None, None, 1, {})
    ft = cfg.finetune
    assert (ft.epochs, ft.lr, ft.batch_size, ft.optimizer, ft.schedule) == (3, 0.01, 128, "sgd", "cosine")
    assert (ft.distill, ft.temperature, ft.alpha) == (False, 4.0, 0.7)
    assert (cfg.export.onnx, cfg.export.quantize) == (False, False)
    assert (cfg.tracking.uri, cfg.tracking.experiment, cfg.tracking.register) == (None, "experiment", True)


def test_name_fills_output_dir_and_tracking_experiment(tmp_path):
    cfg = load_config(write(tmp_path, "name: r20-fmnist\n" + MINIMAL))
    assert cfg.output_dir == "runs/r20-fmnist"
    assert cfg.tracking.experiment == "r20-fmnist"


def test_plugin_reference_is_accepted_as_model_and_data_name(tmp_path):
    cfg = load_config(write(tmp_path, "model: {name: 'mypkg.models:build'}\ndata: {name: 'mypkg.data:load'}\n"))
    assert cfg.model.name == "mypkg.models:build" and cfg.data.name == "mypkg.data:load"


def test_sections_convert_to_library_settings(tmp_path):
    cfg = load_config(write(tmp_path, "seed: 7\n" + MINIMAL + "train: {epochs: 2, augment: false}\nproxy: {val_samples: null}\n"))
    settings = library_settings(cfg)
    assert (settings.train.epochs, settings.train.augment, settings.train.seed, settings.train.lr) == (2, False, 7, 0.2)
    assert settings.proxy.val_samples is None


def test_overrides_are_parsed_as_yaml_and_applied(tmp_path):
    path = write(tmp_path, MINIMAL + "search: {searcher: ppo, episodes: 100}\n")
    cfg = load_config(path, ["search.episodes=20", "model.ignore=[fc, conv1]", "reward.kind=soft", "search.params.n_steps=64", "latency.rel_ci=null"])
    assert cfg.search.episodes == 20 and cfg.search.searcher == "ppo"
    assert cfg.model.ignore == ["fc", "conv1"]
    assert cfg.reward.kind == "soft"
    assert cfg.search.params == {"n_steps": 64}
    assert cfg.latency.rel_ci is None


def test_bad_override_value_names_the_override_and_field(tmp_path):
    message = config_error(write(tmp_path, MINIMAL), ["search.episodes=abc"])
    assert message == "override 'search.episodes=abc': search.episodes: 'abc' is not allowed; expected an integer"


def test_override_of_unknown_field_is_rejected(tmp_path):
    message = config_error(write(tmp_path, MINIMAL), ["search.epsiodes=3"])
    assert "search.epsiodes: unknown field (did you mean 'episodes'?)" in message


@pytest.mark.parametrize("item", ["search.episodes", "=3", "search..episodes=3"])
def test_malformed_override_is_rejected(tmp_path, item):
    assert "expected 'dotted.key=value'" in config_error(write(tmp_path, MINIMAL), [item])


def test_override_through_a_scalar_is_rejected(tmp_path):
    message = config_error(write(tmp_path, "seed: 3\n" + MINIMAL), ["seed.value=1"])
    assert message == "override 'seed.value=1': seed is 3, not a section with fields"
    message = config_error(write(tmp_path, MINIMAL), ["seed.value=1"])
    assert message == "override 'seed.value=1': seed: {'value': 1} is not allowed; expected an integer"


def test_unknown_searcher_lists_the_registered_searchers(tmp_path):
    path = write(tmp_path, MINIMAL + "search: {searcher: ppo2}\n")
    assert config_error(path) == (
        f"{path}: search.searcher: 'ppo2' is not allowed; "
        "allowed: 'ppo', 'optuna', 'ddpg', 'random', 'uniform', 'global', 'layer_drop', 'sensitivity' or 'package.module:Class'"
    )


def test_literal_error_lists_allowed_values(tmp_path):
    path = write(tmp_path, MINIMAL + "reward: {kind: smooth}\n")
    assert config_error(path) == f"{path}: reward.kind: 'smooth' is not allowed; allowed: 'hard' or 'soft'"


def test_unknown_field_lists_allowed_fields(tmp_path):
    message = config_error(write(tmp_path, MINIMAL + "budget: {bogus: 1}\n"))
    assert message.endswith("experiment.yaml: budget.bogus: unknown field; allowed fields: metric, target, target_ms")


def test_unknown_top_level_section_lists_sections(tmp_path):
    message = config_error(write(tmp_path, MINIMAL + "serach: {episodes: 3}\n"))
    assert "serach: unknown field (did you mean 'search'?); allowed fields: name, seed, output_dir, model," in message


def test_missing_required_field_and_section(tmp_path):
    assert config_error(write(tmp_path, "model: {}\n")).endswith("experiment.yaml: model.name: missing required field")
    message = config_error(write(tmp_path, "seed: 1\n"))
    assert message.endswith("experiment.yaml: model: missing required section (fields: name, checkpoint, ignore)")


def test_empty_file_reports_the_missing_model(tmp_path):
    assert "model: missing required section" in config_error(write(tmp_path, ""))


def test_section_given_as_scalar_is_rejected(tmp_path):
    message = config_error(write(tmp_path, "model: resnet20\n"))
    assert message.endswith("model: 'resnet20' is not allowed; expected a mapping with fields: name, checkpoint, ignore")


def test_out_of_range_value_names_the_bound(tmp_path):
    assert config_error(write(tmp_path, MINIMAL + "train: {epochs: 0}\n")).endswith("train.epochs: 0 is not allowed; must be >= 1")
    assert config_error(write(tmp_path, MINIMAL + "pruning: {max_ratio: 1.0}\n")).endswith("pruning.max_ratio: 1.0 is not allowed; must be < 1.0")
    assert config_error(write(tmp_path, MINIMAL + "reward: {exponent: 0.1}\n")).endswith("reward.exponent: 0.1 is not allowed; must be <= 0.0")
    assert config_error(write(tmp_path, MINIMAL + "data: {val_fraction: 0}\n")).endswith("data.val_fraction: 0 is not allowed; must be > 0.0")


def test_wrong_type_says_what_is_expected(tmp_path):
    assert config_error(write(tmp_path, MINIMAL + "train: {epochs: 1.5}\n")).endswith("train.epochs: 1.5 is not allowed; expected an integer")
    assert config_error(write(tmp_path, MINIMAL + "export: {onnx: maybe}\n")).endswith("export.onnx: 'maybe' is not allowed; expected true or false")


def test_unknown_model_and_data_list_the_zoo(tmp_path):
    message = config_error(write(tmp_path, "model: {name: nosuch}\n"))
    assert "model.name: 'nosuch' is not allowed; allowed: 'resnet20'," in message
    assert "or 'package.module:factory'" in message
    message = config_error(write(tmp_path, MINIMAL + "data: {name: cifar}\n"))
    assert "data.name: 'cifar' is not allowed; allowed: 'fashion_mnist', 'digits', 'fortunes' or 'package.module:factory'" in message


def test_unsafe_experiment_name_is_rejected(tmp_path):
    assert "name: 'a/b' is not allowed; allowed: letters, digits" in config_error(write(tmp_path, "name: a/b\n" + MINIMAL))


def test_several_errors_report_the_first_and_count_the_rest(tmp_path):
    message = config_error(write(tmp_path, MINIMAL + "train: {epochs: 0, lr: -1}\nseed: -3\n"))
    assert message.endswith("(+2 more errors)")
    assert message.count("is not allowed") == 1


def test_target_and_target_ms_are_exclusive(tmp_path):
    message = config_error(write(tmp_path, MINIMAL + "budget: {target: 0.3, target_ms: 4}\n"))
    assert message.endswith("budget: target=0.3 and target_ms=4.0 are both set; set exactly one (target: fraction of dense, target_ms: milliseconds) and the other to null")


def test_target_ms_alone_replaces_the_default_fraction(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL + "budget: {target_ms: 4}\n"))
    assert (cfg.budget.target, cfg.budget.target_ms) == (None, 4.0)


def test_override_adding_target_ms_to_a_target_names_the_override(tmp_path):
    path = write(tmp_path, MINIMAL + "budget: {target: 0.3}\n")
    assert config_error(path, ["budget.target_ms=4"]).startswith("override 'budget.target_ms=4': budget: target=0.3 and target_ms=4.0")
    cfg = load_config(path, ["budget.target_ms=4", "budget.target=null"])
    assert cfg.budget.target_ms == 4.0


def test_target_ms_needs_the_latency_metric(tmp_path):
    message = config_error(write(tmp_path, MINIMAL + "budget: {metric: macs, target_ms: 4}\n"))
    assert message.endswith("budget: target_ms=4.0 needs metric 'latency', not 'macs'; for metric 'macs' set target (fraction of dense) instead")
    cfg = load_config(write(tmp_path, MINIMAL + "budget: {metric: macs, target: 0.4}\n"))
    assert (cfg.budget.metric, cfg.budget.target) == ("macs", 0.4)


def test_target_above_one_is_rejected(tmp_path):
    assert config_error(write(tmp_path, MINIMAL + "budget: {target: 1.5}\n")).endswith("budget.target: 1.5 is not allowed; must be <= 1.0")


def test_yaml_syntax_error_gives_line_number(tmp_path):
    path = write(tmp_path, "model:\n  name: resnet20\nsearch: {episodes: 3\nseed: 1\n")
    message = config_error(path)
    assert message.startswith(f"{path}:4:")
    assert "YAML syntax error" in message


def test_missing_file_is_reported(tmp_path):
    path = tmp_path / "nope.yaml"
    assert config_error(path) == f"{path}: file not found"


def test_top_level_must_be_a_mapping(tmp_path):
    message = config_error(write(tmp_path, "- model\n- search\n"))
    assert message.endswith("the top level must be a mapping of sections (model:, budget:, ...), not a list")


def test_config_error_is_an_autoprune_error_chained_to_the_cause(tmp_path):
    with pytest.raises(AutopruneError) as info:
        load_config(write(tmp_path, MINIMAL + "search: {episodes: 0}\n"))
    assert info.value.__cause__ is not None


def test_flat_gives_dotted_string_params(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL), ["search.params={n_steps: 64, net: {pi: [32]}}"])
    flat = cfg.flat()
    assert all(isinstance(v, str) for v in flat.values())
    assert flat["model.name"] == "resnet20"
    assert flat["search.episodes"] == "150"
    assert flat["budget.target"] == "0.5"
    assert flat["budget.target_ms"] == "null"
    assert flat["train.augment"] == "true"
    assert flat["model.ignore"] == "[]"
    assert flat["search.params.n_steps"] == "64"
    assert flat["search.params.net.pi"] == "[32]"
    assert "search.params" not in flat and "model" not in flat


def test_dump_round_trips(tmp_path):
    cfg = load_config(write(tmp_path, "name: demo\n" + MINIMAL + "budget: {target_ms: 3.5}\nsearch: {params: {lr: 0.001}}\n"))
    text = dump_config(cfg)
    assert yaml.safe_load(text)["budget"] == {"metric": "latency", "target": None, "target_ms": 3.5}
    assert parse_config(yaml.safe_load(text)) == cfg
    assert load_config(write(tmp_path, text, "dumped.yaml")) == cfg


def test_parse_config_does_not_modify_its_input():
    data = {"model": {"name": "mlp"}}
    cfg = parse_config(data, overrides=["model.ignore=[fc]"])
    assert cfg.model.ignore == ["fc"] and data == {"model": {"name": "mlp"}}
    assert isinstance(cfg, ExperimentConfig)


def test_round_to_auto_resolves_to_the_serving_runtimes_simd_block_and_to_none_on_eager():
    from autoprune.config.settings import evaluator_options
    from autoprune.measure.onnx_file import simd_channel_block

    def resolved(*overrides: str) -> int | None:
        return evaluator_options(load_config(DEMO, list(overrides)))["round_to"]

    assert simd_channel_block() in (8, 16)
    assert resolved("latency.backend=onnxruntime") == simd_channel_block()
    assert resolved("latency.backend=openvino") == simd_channel_block()
    assert resolved("latency.backend=torch") is None
    assert resolved("latency.backend=onnxruntime", "pruning.round_to=4") == 4
    assert resolved("latency.backend=onnxruntime", "pruning.round_to=null") is None
