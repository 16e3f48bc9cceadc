"""SFT of the tiny model on a template, for the data-parallel test: started under `accelerate launch`, and run
in-process for the one-process reference. Writes the held-out loss before and after training as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from datasets import Dataset

from rlhf_lib.config import ModelConfig, SFTConfig
from rlhf_lib.hf_training import save_final, train_resuming
from rlhf_lib.models.loading import load_causal_lm, load_tokenizer
from rlhf_lib.sft_trainer import SFTTrainer

WORDS = ["great", "fun", "good", "bad", "dull", "awful", "nice", "sad"]


def run(model_dir: str, out_dir: Path, per_device_batch_size: int) -> dict[str, float]:
    """Train on 56 template rows, hold out 8 word pairs never seen in training; the losses and world size."""
    cfg = ModelConfig(name_or_path=model_dir)
    tokenizer = load_tokenizer(cfg, padding_side="right")
    rows = [{"prompt": f"the movie was {a}", "completion": f" and the acting was {b}"} for a in WORDS for b in WORDS]
    sft = SFTConfig(
        output_dir=str(out_dir),
        max_steps=40,
        learning_rate=3e-3,
        per_device_batch_size=per_device_batch_size,
        logging_steps=10,
        save_steps=20,
        max_length=32,
        bf16=False,
    )
    trainer = SFTTrainer(load_causal_lm(cfg), tokenizer, sft, Dataset.from_list(rows[8:]), Dataset.from_list(rows[:8]))
    before = trainer.evaluate()["eval_loss"]
    train_resuming(trainer)
    after = trainer.evaluate()["eval_loss"]
    save_final(trainer.model, tokenizer, out_dir / "final")
    return {"before": before, "after": after, "processes": trainer.args.world_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_dir")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--per-device-batch-size", type=int, default=4)
    args = parser.parse_args()
    result = run(args.model_dir, args.out_dir, args.per_device_batch_size)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    (args.out_dir / f"result-rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
