"""What the SFT and reward trainers share on top of `transformers.Trainer`: arguments, resume, final save."""

from __future__ import annotations

import logging
import math
import re
import shutil
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments

from rlhf_lib.allocator import keep_freed_memory
from rlhf_lib.callbacks import MetricsSink, MetricsSinkCallback
from rlhf_lib.config import _TrainingConfig
from rlhf_lib.errors import NonFiniteError
from rlhf_lib.io import atomic_dir, atomic_write_text
from rlhf_lib.precision import use_bf16
from rlhf_lib.processes import enter_launched_run

logger = logging.getLogger(__name__)
_CHECKPOINT = re.compile(r"checkpoint-\d+")


def training_arguments(cfg: _TrainingConfig, has_eval: bool, **overrides) -> TrainingArguments:
    """Map our config onto TrainingArguments; checkpoints go to `<output_dir>/checkpoints`."""
    eval_strategy = ("steps" if cfg.eval_steps else "epoch") if has_eval else "no"
    bf16 = use_bf16(cfg.bf16)
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
        bf16=bf16,
        # bf16: else TrainingArguments refuses bf16 without a GPU; a launch of CPU processes: else each trains alone.
        use_cpu=enter_launched_run() or (bf16 and not torch.cuda.is_available()),
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
        dataloader_pin_memory=torch.cuda.is_available(),  # pinning warns and does nothing without a GPU
        **overrides,
    )


COMPLETE_MARKER = ".complete"


class _MarkCompleteCheckpoints(TrainerCallback):
    """Marks a checkpoint folder complete once the Trainer has written all of it.

    transformers writes checkpoint-N in place, file by file; a SIGKILL mid-save leaves a folder
    that `get_last_checkpoint` would pick. Resume trusts only marked folders.
    """

    def on_save(self, args, state, control, **kwargs):
        # Every process has written its part (its RNG state, its shards) before the folder is marked.
        PartialState().wait_for_everyone()
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            atomic_write_text(folder / COMPLETE_MARKER, f"{state.global_step}\n")


class GuardedTrainer(Trainer):
    """A Trainer whose checkpoints survive a kill, and which stops at the first NaN/inf loss.

    transformers keeps training through a NaN loss (it only filters it from the logs) and would
    save NaN weights as the next checkpoint; raising before the optimizer step keeps the last good
    checkpoint the newest.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.add_callback(_MarkCompleteCheckpoints())
        if not torch.cuda.is_available():
            keep_freed_memory()
            if self.args.bf16:
                # Same math, other kernel: torch's CPU flash-attention backward is slow in bf16 (SmolLM2-135M SFT,
                # batch 8 x 128 tokens: 562 tokens/s with eager attention, 444 with sdpa; no difference in fp32).
                self.model.set_attn_implementation("eager")

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            raise NonFiniteError(
                f"non-finite training loss ({loss.item()}) at step {self.state.global_step + 1}; the checkpoints in "
                f"{self.args.output_dir} are left as they were"
            )
        return loss


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest marked checkpoint in `folder`; unmarked ones (cut short by a kill) are deleted, by the main
    process of a multi-process run while the others wait."""
    processes = PartialState()
    if processes.is_main_process:
        for partial in _checkpoints(folder):
            if not (partial / COMPLETE_MARKER).is_file():
                logger.warning("removing %s: its save was interrupted", partial)
                shutil.rmtree(partial)
    processes.wait_for_everyone()
    found = _checkpoints(folder)
    return found[-1] if found else None


def _checkpoints(folder: Path) -> list[Path]:
    """The checkpoint-N folders in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    found = (p for p in folder.iterdir() if p.is_dir() and _CHECKPOINT.fullmatch(p.name))
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def metric_callbacks(sink: MetricsSink | None, prefix: str) -> list[TrainerCallback]:
    return [MetricsSinkCallback(sink, prefix)] if sink else []


def train_resuming(trainer: Trainer) -> dict[str, float]:
    """Train, resuming from the newest complete checkpoint in the output folder if an earlier run left one.

    Returns the Trainer's metrics plus `resumed_from_step` (0 for a fresh start).
    """
    last = last_complete_checkpoint(Path(trainer.args.output_dir))
    result = trainer.train(resume_from_checkpoint=str(last) if last else None)
    metrics = dict(result.metrics)
    metrics["resumed_from_step"] = int(last.name.split("-")[1]) if last else 0
    for key, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise FloatingPointError(f"training ended with {key}={value}: the model diverged")
    return metrics


def save_final(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    path: str | Path,
    gathered_state: dict[str, torch.Tensor] | None = None,
) -> None:
    """Save a standalone model (LoRA merged into the weights) and its tokenizer, atomically.

    Merging lets the next stage load one plain checkpoint and put a fresh adapter on it, so its
    reference model is this one with the adapter disabled. `gathered_state` holds the full weights of a model
    whose parameters are sharded over processes (FSDP, DeepSpeed ZeRO-3), gathered by every process
    (`sharded_state`); only the main process writes, the others wait.
    """
    if gathered_state is not None and hasattr(model, "merge_and_unload"):
        raise ValueError(
            "a LoRA adapter trained on sharded weights (FSDP, DeepSpeed) cannot be merged into them here; "
            "train it data parallel (configs/accelerate/multi_gpu.yaml)"
        )
    processes = PartialState()
    if processes.is_main_process:
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        with atomic_dir(path) as staging:
            model.save_pretrained(staging, state_dict=gathered_state)
            tokenizer.save_pretrained(staging)
    processes.wait_for_everyone()


def sharded_state(trainer: Trainer) -> dict[str, torch.Tensor] | None:
    """The full weights of a trainer whose parameters are sharded (FSDP, DeepSpeed ZeRO-3), gathered: every process
    must call this; None when each process holds the whole model (one process, DDP, ZeRO-2)."""
    deepspeed = trainer.accelerator.state.deepspeed_plugin if trainer.is_deepspeed_enabled else None
    if trainer.is_fsdp_enabled or (deepspeed is not None and deepspeed.zero_stage == 3):
        return trainer.accelerator.get_state_dict(trainer.model)
    return None
