"""rlhf_lib: SFT, reward modelling and PPO with a KL penalty, on transformers, accelerate and peft.

No orchestration imports (Prefect, MLflow, DVC, Great Expectations) belong in this package.
"""

from rlhf_lib.callbacks import MetricsSink
from rlhf_lib.config import (
    ConfigError,
    DataConfig,
    GenerationConfig,
    LoraSettings,
    ModelConfig,
    PPOConfig,
    RewardConfig,
    SFTConfig,
    build_config,
    load_yaml,
)
from rlhf_lib.errors import NonFiniteError
from rlhf_lib.models.value_head import AutoModelForCausalLMWithValueHead
from rlhf_lib.ppo.rollout import RewardFunction, RewardModelScorer
from rlhf_lib.ppo.trainer import PPOTrainer
from rlhf_lib.reward_trainer import RewardTrainer
from rlhf_lib.sft_trainer import SFTTrainer

__all__ = [
    "AutoModelForCausalLMWithValueHead",
    "ConfigError",
    "DataConfig",
    "GenerationConfig",
    "LoraSettings",
    "MetricsSink",
    "ModelConfig",
    "NonFiniteError",
    "PPOConfig",
    "PPOTrainer",
    "RewardConfig",
    "RewardFunction",
    "RewardModelScorer",
    "RewardTrainer",
    "SFTConfig",
    "SFTTrainer",
    "build_config",
    "load_yaml",
]
