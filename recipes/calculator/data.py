"""The calculator recipe's data builder: arithmetic word problems generated from a seed.

Sums and differences of 4-digit numbers and products of a 3-digit by a 2-digit number: a 135M model answers
them by heart mostly wrong, and exactly with the calculator. SFT demonstrations show both ways of answering: a
share `tool_share` calls the calculator and copies its result, the rest state the answer outright (right, as a
teacher would, but the model cannot compute it). The SFT policy therefore calls the tool on some problems and
guesses on others, and PPO, rewarded for right answers, has something to learn: call it every time. All pools are
disjoint by problem.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from recipes.calculator.arithmetic import INSTRUCTION, OPERATIONS, TEMPLATES
from rlhf_lib.config import ConfigError
from rlhf_lib.io import atomic_write_jsonl

FORMATS = {
    "sft.jsonl": "prompt_completion",
    "preference.jsonl": None,  # the reward is a Python function: no reward model to train
    "ppo_prompts.jsonl": "prompt",
    "eval_prompts.jsonl": "prompt",
    "judge_train.jsonl": None,  # the judge is exact arithmetic: nothing to train
    "judge_test.jsonl": None,
}


class CalculatorData(BaseModel):
    """How many problems each pool gets (`prepare:` with this class as `builder`)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    seed: int = 0
    """Seed of the problems: the same seed writes byte-identical files."""
    sft_examples: int = Field(400, gt=0)
    """Demonstrations for SFT."""
    tool_share: float = Field(0.3, ge=0.0, le=1.0)
    """Share of demonstrations that call the calculator (the rest state the answer outright)."""
    ppo_prompts: int = Field(256, gt=0)
    """Problems for PPO rollouts."""
    eval_prompts: int = Field(100, gt=0)
    """Held-out problems the judge scores."""

    def build(self, out_dir: Path) -> dict[str, str | None]:
        """Write the canonical files; return each file's format (the manifest `validate` checks them by)."""
        for name, rows in self.records().items():
            atomic_write_jsonl(out_dir / name, rows)
        return dict(FORMATS)

    def records(self) -> dict[str, list[dict]]:
        rng = np.random.default_rng(self.seed)
        total = self.sft_examples + self.ppo_prompts + self.eval_prompts
        problems: dict[str, tuple[str, int]] = {}  # problem text -> (expression, answer); a dict keeps them distinct
        for _ in range(50 * total):
            if len(problems) == total:
                break
            template = TEMPLATES[rng.integers(len(TEMPLATES))]
            a, b = _numbers(template.symbol, rng)
            problems.setdefault(
                template.text.format(a=a, b=b), (f"{a} {template.symbol} {b}", OPERATIONS[template.symbol](a, b))
            )
        if len(problems) < total:
            raise ConfigError(f"prepare: could not draw {total} distinct problems")
        items = list(problems.items())
        sft, ppo, held_out = (
            items[: self.sft_examples],
            items[self.sft_examples : self.sft_examples + self.ppo_prompts],
            items[self.sft_examples + self.ppo_prompts :],
        )
        uses_tool = rng.random(len(sft)) < self.tool_share
        return {
            "sft.jsonl": [
                {"prompt": _user(text), "completion": _assistant(_demonstration(expression, answer, tool))}
                for (text, (expression, answer)), tool in zip(sft, uses_tool, strict=True)
            ],
            "preference.jsonl": [],
            "ppo_prompts.jsonl": [{"prompt": _user(text)} for text, _ in ppo],
            "eval_prompts.jsonl": [{"prompt": _user(text)} for text, _ in held_out],
            "judge_train.jsonl": [],
            "judge_test.jsonl": [],
        }


def _numbers(symbol: str, rng: np.random.Generator) -> tuple[int, int]:
    if symbol == "*":
        return int(rng.integers(100, 1000)), int(rng.integers(11, 100))
    a, b = int(rng.integers(1000, 10000)), int(rng.integers(1000, 10000))
    return (max(a, b), min(a, b)) if symbol == "-" else (a, b)


def _demonstration(expression: str, answer: int, tool: bool) -> str:
    if tool:
        return f"<call>calculator: {expression}</call><result>{answer}</result> Answer: {answer}"
    return f"Answer: {answer}"


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{text}\n{INSTRUCTION}"}]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]
