"""What the Trainer-based stages (sft, reward, judge) share: their config, resume, final save, or a skip."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from transformers import PreTrainedTokenizerBase, Trainer

from rlhf_lib.config import ModelConfig, _TrainingConfig
from rlhf_lib.hf_training import save_final, sharded_state, train_resuming
from rlhf_lib.io import atomic_write_json
from rlhf_lib.models.loading import require_fits_context
from tasks.params import checkpoint_dir, with_output_dir

C = TypeVar("C", bound=_TrainingConfig)
SKIPPED_FILE = "skipped.json"


def stage_config(stage: str, section: C, model: ModelConfig, inputs: list[Path]) -> C:
    """The stage's trainer config, its checkpoints in a folder of their own for these settings and inputs.

    The model's context is checked first, so a too-long max_length fails before any model loads.
    """
    require_fits_context(model, section.max_length, f"{stage}.max_length")
    settings = {stage: section.model_dump(exclude={"output_dir"}), "model": model.model_dump()}
    return with_output_dir(section, checkpoint_dir(stage, settings, inputs))


def fit_and_save(trainer: Trainer, tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> tuple[dict[str, float], int]:
    """Train (resuming from the last complete checkpoint), evaluate, save the final model; (evaluation, resumed)."""
    resumed_from = train_resuming(trainer)["resumed_from_step"]
    evaluation = trainer.evaluate()
    save_final(trainer.model, tokenizer, out_dir, sharded_state(trainer))
    return evaluation, resumed_from


def skip(stage: str, out_dir: Path, reason: str) -> dict[str, float]:
    """Record that a stage had nothing to do (its output folder must exist for DVC) and say so."""
    print(f"{stage}: skipped, {reason}")
    atomic_write_json(out_dir / SKIPPED_FILE, {"stage": stage, "reason": reason})
    return {f"{stage}/skipped": 1.0}
