"""Typed configuration: presets, `extends`, `--set` overrides and clear errors."""

from __future__ import annotations

import pytest

from paal_ray.config import BudgetConfig, ConfigError, RunConfig, dump_config, load_config, preset_names


def test_presets_load_and_match_the_paper():
    assert {"paper", "cpu", "acdc", "segthor", "brain_tumour"} <= set(preset_names())
    acdc = load_config("acdc", ["pool=/p"])
    assert (acdc.budget.init_ratio, acdc.budget.max_ratio, acdc.budget.rounds) == (0.05, 0.10, 5)
    assert acdc.model.encoder == "resnet50" and acdc.schedule.mode is None  # each strategy its own
    bt = load_config("brain_tumour", ["pool=/p"])
    assert (bt.budget.init_ratio, bt.budget.max_ratio, bt.budget.rounds) == (0.005, 0.05, 10)
    assert bt.model.image_size == 256
    cpu = load_config("cpu", ["pool=/p"])
    assert cpu.model.encoder == "plain_unet" and not cpu.scaling.use_gpu


def test_overrides_are_typed_and_nested():
    cfg = load_config("cpu", ["pool=/p", "budget.rounds=3", "strategy.name=random",
                              "strategy.params={reduction: pixel}", "ray.address=null"])
    assert cfg.budget.rounds == 3 and isinstance(cfg.budget.rounds, int)
    assert cfg.strategy.name == "random" and cfg.strategy.params == {"reduction": "pixel"}
    assert cfg.ray.address is None


def test_yaml_file_extends_a_preset(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("extends: cpu\npool: /data/pool\nbudget: {rounds: 4}\n")
    cfg = load_config(f)
    assert cfg.budget.rounds == 4 and cfg.budget.max_ratio == 0.15  # merged, not replaced
    assert load_config(f, ["budget.rounds=2"]).budget.rounds == 2
    # a dumped config reloads to the same object
    g = tmp_path / "dump.yaml"
    g.write_text(dump_config(cfg))
    assert load_config(g) == cfg


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["pool=/p", "budget.rounds=zero"], "budget.rounds"),
        (["pool=/p", "budget.nonsense=1"], "budget.nonsense"),
        (["budget.rounds=2"], "pool"),
        (["pool=/p", "schedule.mode=sometimes"], "schedule.mode"),
        (["rounds"], "KEY=VALUE"),
    ],
)
def test_bad_config_names_the_field(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config("cpu", overrides)


def test_missing_file_and_bad_yaml_are_named(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pool: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize(("n", "init", "mx", "t", "b0", "b"), [
    (1522, 0.05, 0.10, 5, 76, 15),  # ACDC-sized: (152 - 76) // 5
    (1522, 0.05, 0.50, 20, 76, 34),  # (761 - 76) // 20
    (66512, 0.005, 0.05, 10, 332, 299),  # Brain Tumour: (3325 - 332) // 10
])
def test_budget_arithmetic_matches_the_paper(n, init, mx, t, b0, b):
    budget = BudgetConfig(init_ratio=init, max_ratio=mx, rounds=t)
    assert budget.initial_count(n) == b0
    assert budget.per_round(n) == b


def test_config_rejects_unknown_top_level_keys():
    with pytest.raises(Exception, match="extra"):
        RunConfig.model_validate({"pool": "/p", "typo_section": {}})
