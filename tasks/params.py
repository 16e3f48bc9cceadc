"""`params.yaml`: every knob of the pipeline, validated as a whole before any stage does work."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from rlhf_lib.config import (
    ClassifierConfig,
    ConfigError,
    GenerationConfig,
    ModelConfig,
    PPOConfig,
    RewardConfig,
    SFTConfig,
    build_config,
    load_yaml,
)
from rlhf_lib.precision import default_bf16
from tasks.expectations import ValidateConfig
from tasks.prepare import PrepareConfig

# Stage outputs live at fixed places so dvc.yaml can name them; params.yaml must not move them.
DATA_DIR = Path("data/prepared")
MODELS_DIR = Path("models")
CHECKPOINTS_DIR = Path("checkpoints")
METRICS_DIR = Path("metrics")
REPORTS_DIR = Path("reports")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class EvaluateConfig(_Section):
    """Held-out comparison of the SFT and PPO policies."""

    num_prompts: int = Field(64, gt=0)
    """Evaluation prompts to use (from data/prepared/eval_prompts.jsonl)."""
    generation: GenerationConfig = GenerationConfig()
    """Sampling settings shared by both policies."""


class TrackingConfig(_Section):
    """MLflow settings."""

    experiment: str = "rlhf-pipeline"
    """MLflow experiment of the pipeline runs."""
    log_models: bool = True
    """Log the reward model and the PPO policy as MLflow models and register them."""
    policy_model_name: str = "rlhf-policy"
    """Registered model name of the PPO policy."""
    reward_model_name: str = "rlhf-reward-model"
    """Registered model name of the reward model."""
    fallback_to_local: bool = False
    """If the MLflow server in MLFLOW_TRACKING_URI is unreachable, log to sqlite:///mlflow.db instead of failing."""
    promotion_kl_budget: float = Field(5.0, gt=0)
    """Most KL(PPO || SFT) per response (nats) a candidate may have to become champion."""


class PipelineParams(_Section):
    """The whole of params.yaml."""

    seed: int = 0
    """Global seed; stages derive theirs from it unless their section sets one."""
    prepare: PrepareConfig = PrepareConfig()
    """Building the datasets from labelled reviews."""
    validate_data: ValidateConfig = Field(ValidateConfig(), alias="validate")
    """Great Expectations bounds for every dataset."""
    policy: ModelConfig
    """Base policy model (its tokenizer is the policy's)."""
    reward_model: ModelConfig
    """Backbone of the reward model (may have its own tokenizer)."""
    sft: dict[str, Any] = {}
    """SFTConfig fields except output_dir (see rlhf_lib.config.SFTConfig)."""
    reward: dict[str, Any] = {}
    """RewardConfig fields except output_dir."""
    ppo: dict[str, Any] = {}
    """PPOConfig fields except output_dir."""
    judge_model: ModelConfig | None = None
    """Backbone of the held-out sentiment judge; None reuses reward_model's backbone."""
    judge: dict[str, Any] = {}
    """ClassifierConfig fields except output_dir (training of the judge)."""
    evaluate: EvaluateConfig = EvaluateConfig()
    """Evaluation settings."""
    tracking: TrackingConfig = TrackingConfig()
    """MLflow settings."""

    def sft_config(self) -> SFTConfig:
        return _with_output(SFTConfig, self.sft, "sft")

    def reward_config(self) -> RewardConfig:
        return _with_output(RewardConfig, self.reward, "reward")

    def ppo_config(self) -> PPOConfig:
        return _with_output(PPOConfig, self.ppo, "ppo")

    def judge_config(self) -> ClassifierConfig:
        return _with_output(ClassifierConfig, self.judge, "judge")

    def judge_backbone(self) -> ModelConfig:
        return self.judge_model or self.reward_model.model_copy(update={"lora": None})


def _with_output(cls, section: dict[str, Any], name: str):
    if "output_dir" in section:
        raise ConfigError(f"{name}.output_dir: set by the pipeline ({CHECKPOINTS_DIR / name}); remove it")
    return build_config(cls, {**section, "output_dir": str(CHECKPOINTS_DIR / name)}, name)


def checkpoint_dir(stage: str, settings: Any, inputs: list[Path]) -> Path:
    """Checkpoints of one stage for one set of settings and inputs.

    A rerun with the same settings and inputs resumes; a changed param or dataset starts afresh
    instead of resuming someone else's run. Files are hashed by content, folders by their
    files' names, sizes and mtimes (hashing 500 MB of weights would cost seconds per stage).
    """
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in inputs:
        if path.is_file():
            digest.update(path.read_bytes())
        for file in sorted(path.rglob("*")) if path.is_dir() else []:
            stat = file.stat()
            digest.update(f"{file.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return CHECKPOINTS_DIR / stage / digest.hexdigest()[:12]


def load_params(path: str | Path = "params.yaml") -> PipelineParams:
    """Read and validate params.yaml, including every trainer section, naming any bad key."""
    return _validated(load_yaml(path))


def params_from_text(text: str) -> PipelineParams:
    """Validate the text of a params file (e.g. a profile with overrides) before it is written anywhere."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"params are not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError("params: expected a YAML mapping at the top level")
    return _validated(data)


def _validated(data: dict[str, Any]) -> PipelineParams:
    params = build_config(PipelineParams, data, "")
    params.sft_config(), params.reward_config(), params.ppo_config(), params.judge_config()
    default_bf16()  # a bad RLHF_DEFAULT_PRECISION fails here too, before any model loads
    return params
