"""Config errors name the offending key, before any work."""

from __future__ import annotations

import pytest

from rlhf_lib.config import ConfigError, ModelConfig, PPOConfig, SFTConfig, build_config, load_yaml


def test_valid_mapping_builds_typed_config():
    cfg = build_config(PPOConfig, {"output_dir": "o", "batch_size": 8, "num_mini_batches": 4}, "ppo")
    assert cfg.batch_size == 8 and cfg.num_mini_batches == 4
    assert isinstance(cfg.learning_rate, float)


@pytest.mark.parametrize(
    ("cls", "mapping", "expected"),
    [
        (PPOConfig, {"output_dir": "o", "kl_coeff": 0.1}, "ppo.kl_coeff: unknown key"),
        (PPOConfig, {"output_dir": "o", "batch_size": "eight"}, "ppo.batch_size"),
        (PPOConfig, {"output_dir": "o", "learning_rate": -1e-5}, "ppo.learning_rate"),
        (PPOConfig, {"output_dir": "o", "batch_size": 6, "num_mini_batches": 4}, "divisible by num_mini_batches"),
        (PPOConfig, {"output_dir": "o", "kl_estimator": "k2"}, "ppo.kl_estimator"),
        (PPOConfig, {}, "ppo.output_dir: required key is missing"),
        (SFTConfig, {"output_dir": "o", "max_steps": 0}, "max_steps must be positive"),
        (ModelConfig, {"name_or_path": "x", "lora": {"rank": 8}}, "model.lora.rank: unknown key"),
    ],
)
def test_bad_values_name_the_key(cls, mapping, expected):
    section = {PPOConfig: "ppo", SFTConfig: "sft", ModelConfig: "model"}[cls]
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.").replace("(", r"\(")):
        build_config(cls, mapping, section)


def test_field_docs_come_from_attribute_docstrings():
    assert "KL penalty" in PPOConfig.model_fields["kl_coef"].description


def test_load_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(tmp_path / "list.yaml")
    (tmp_path / "ok.yaml").write_text("ppo:\n  batch_size: 4\n")
    assert load_yaml(tmp_path / "ok.yaml") == {"ppo": {"batch_size": 4}}
