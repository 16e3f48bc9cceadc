"""What the SFT and reward trainers share on top of `transformers.Trainer`: arguments, resume, final save."""

from __future__ import annotations

import math
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from rlhf_lib.callbacks import MetricsSink, MetricsSinkCallback
from rlhf_lib.config import _TrainingConfig
from rlhf_lib.io import atomic_dir


def training_arguments(cfg: _TrainingConfig, has_eval: bool, **overrides) -> TrainingArguments:
    """Map our config onto TrainingArguments; checkpoints go to `<output_dir>/checkpoints`."""
    eval_strategy = ("steps" if cfg.eval_steps else "epoch") if has_eval else "no"
    return TrainingArguments(
        output_dir=str(Path(cfg.output_dir) / "checkpoints"),
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_batch_size,
        per_device_eval_batch_size=cfg.per_device_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=cfg.weight_decay,
        logging_steps=cfg.logging_steps,
        eval_strategy=eval_strategy,
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        bf16=cfg.bf16,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
        **overrides,
    )


def metric_callbacks(sink: MetricsSink | None, prefix: str) -> list[TrainerCallback]:
    return [MetricsSinkCallback(sink, prefix)] if sink else []


def train_resuming(trainer: Trainer) -> dict[str, float]:
    """Train, resuming from the newest checkpoint in the output folder if an earlier run left one."""
    folder = Path(trainer.args.output_dir)
    last = get_last_checkpoint(str(folder)) if folder.is_dir() else None
    result = trainer.train(resume_from_checkpoint=last)
    metrics = dict(result.metrics)
    for key, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise FloatingPointError(f"training ended with {key}={value}: the model diverged")
    return metrics


def save_final(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: str | Path) -> None:
    """Save a standalone model (LoRA merged into the weights) and its tokenizer, atomically.

    Merging lets the next stage load one plain checkpoint and put a fresh adapter on it, so its
    reference model is this one with the adapter disabled.
    """
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    with atomic_dir(path) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
