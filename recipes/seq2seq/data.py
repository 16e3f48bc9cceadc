"""The seq2seq recipe's data builder: numbers drawn from a seed, to be written out in words.

Every pool (SFT demonstrations, PPO prompts, held-out prompts) is disjoint from the others by number. Held-out rows
carry their `reference` answer, for the reference-based judge (chrF).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from recipes.seq2seq.numbers import LARGEST, prompt_for, spell
from rlhf_lib.config import ConfigError
from rlhf_lib.io import atomic_write_jsonl

FORMATS = {
    "sft.jsonl": "prompt_completion",
    "preference.jsonl": None,  # the reward is a Python function: no reward model to train
    "ppo_prompts.jsonl": "prompt",
    "eval_prompts.jsonl": "prompt",
    "judge_train.jsonl": None,  # the judges are exact match and chrF: nothing to train
    "judge_test.jsonl": None,
}


class NumberWordsData(BaseModel):
    """How many numbers each pool gets (`prepare:` with this class as `builder`)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    seed: int = 0
    """Seed of the numbers: the same seed writes byte-identical files."""
    sft_examples: int = Field(8000, gt=0)
    """Demonstrations for SFT (number -> words)."""
    ppo_prompts: int = Field(2048, gt=0)
    """Numbers for PPO rollouts."""
    eval_prompts: int = Field(200, gt=0)
    """Held-out numbers the judges score."""

    def build(self, out_dir: Path) -> dict[str, str | None]:
        """Write the canonical files; return each file's format (the manifest `validate` checks them by)."""
        for name, rows in self.records().items():
            atomic_write_jsonl(out_dir / name, rows)
        return dict(FORMATS)

    def records(self) -> dict[str, list[dict]]:
        total = self.sft_examples + self.ppo_prompts + self.eval_prompts
        if total > LARGEST + 1:
            raise ConfigError(f"prepare: {total} distinct numbers asked for, but only {LARGEST + 1} exist")
        numbers = np.random.default_rng(self.seed).choice(LARGEST + 1, size=total, replace=False).tolist()
        sft = numbers[: self.sft_examples]
        ppo = numbers[self.sft_examples : self.sft_examples + self.ppo_prompts]
        held_out = numbers[self.sft_examples + self.ppo_prompts :]
        return {
            "sft.jsonl": [{"prompt": prompt_for(n), "completion": spell(n)} for n in sft],
            "preference.jsonl": [],
            "ppo_prompts.jsonl": [{"prompt": prompt_for(n)} for n in ppo],
            "eval_prompts.jsonl": [{"prompt": prompt_for(n), "reference": spell(n)} for n in held_out],
            "judge_train.jsonl": [],
            "judge_test.jsonl": [],
        }
