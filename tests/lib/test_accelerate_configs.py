"""The shipped accelerate configs load with accelerate's own parser and say what they claim."""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "accelerate"
EXPECTED = {
    "multi_gpu.yaml": ("MULTI_GPU", None),
    "fsdp.yaml": ("FSDP", None),
    "deepspeed_zero2.yaml": ("DEEPSPEED", 2),
    "deepspeed_zero3.yaml": ("DEEPSPEED", 3),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_with_its_distributed_type(name):
    config = ClusterConfig.from_yaml_file(CONFIGS / name)
    kind, zero_stage = EXPECTED[name]
    assert config.distributed_type.value == kind
    assert config.num_machines == 1 and config.mixed_precision == "no"  # precision comes from params
    if zero_stage is not None:
        assert config.deepspeed_config["zero_stage"] == zero_stage
    if kind == "FSDP":
        assert config.fsdp_config["fsdp_version"] == 2


def test_every_shipped_config_is_tested():
    assert sorted(path.name for path in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)
