"""The qa recipe's data builder: chatterbot-corpus question -> answer pairs as chat data, split by question.

Each conversation in the corpus's English files opens with a question and its answer (later turns are either a
dialogue going on or alternative answers, and the files do not say which, so they are left out); a question asked
twice keeps its first answer, compared case-blind. Questions are shuffled once with the seed and cut into
disjoint pools: held-out evaluation questions (with their answer as `reference`), PPO prompts, and the training
questions (SFT `messages`, and conversational preference pairs). A pair's rejected answer is the answer to
another training question: the typical failure of a small model on a question it has not seen is a fluent answer
to a different question, and a reward model that tells them apart rewards answering the question asked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field

from rlhf_lib.config import ConfigError
from rlhf_lib.io import atomic_write_jsonl

FORMATS = {
    "sft.jsonl": "messages",
    "preference.jsonl": "preference",
    "ppo_prompts.jsonl": "prompt",
    "eval_prompts.jsonl": "prompt",
    "judge_train.jsonl": None,  # the judges compare with reference answers: nothing to train
    "judge_test.jsonl": None,
}


class QAData(BaseModel):
    """Where the pairs come from and how many questions each pool gets (`prepare:` with this class as `builder`)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    source: str = "chatterbot-corpus"
    """`chatterbot-corpus` (the installed package's English files), or a folder of files in its YAML layout."""
    seed: int = 0
    """Seed of the shuffles: the same seed writes byte-identical files."""
    eval_prompts: int = Field(128, gt=0)
    """Held-out questions, each with its reference answer."""
    ppo_prompts: int = Field(256, gt=0)
    """Questions for PPO rollouts (disjoint from the held-out and training questions)."""
    preference_pairs: int = Field(1200, gt=0)
    """Distinct (own answer, another question's answer) pairs, drawn from the training questions (each question
    about preference_pairs / training questions times, against different wrong answers)."""
    max_answer_words: int = Field(40, gt=0)
    """Pairs whose answer is longer are dropped (the corpus has a few paragraphs among one-liners)."""

    def build(self, out_dir: Path) -> dict[str, str | None]:
        """Write the canonical files; return each file's format (the manifest `validate` checks them by)."""
        for name, rows in self.records().items():
            atomic_write_jsonl(out_dir / name, rows)
        return dict(FORMATS)

    def records(self) -> dict[str, list[dict]]:
        """The rows of each file; sizes are checked before anything is written."""
        split_rng, pair_rng = (np.random.default_rng([self.seed, purpose]) for purpose in range(2))
        pairs = self._pairs()
        pairs = [pairs[i] for i in split_rng.permutation(len(pairs))]
        held_out = self.eval_prompts + self.ppo_prompts
        if held_out + 2 > len(pairs):
            raise ConfigError(
                f"prepare.ppo_prompts: {self.eval_prompts} evaluation and {self.ppo_prompts} PPO questions leave "
                f"fewer than two of the corpus's {len(pairs)} distinct questions for training"
            )
        evaluation, ppo, train = pairs[: self.eval_prompts], pairs[self.eval_prompts : held_out], pairs[held_out:]
        preference = [
            {"prompt": _user(train[q][0]), "chosen": _assistant(train[q][1]), "rejected": _assistant(train[o][1])}
            for q, o in self._mismatches(train, pair_rng)
        ]
        return {
            "sft.jsonl": [{"messages": _user(q) + _assistant(a)} for q, a in train],
            "preference.jsonl": preference,
            "ppo_prompts.jsonl": [{"prompt": _user(q)} for q, _ in ppo],
            "eval_prompts.jsonl": [{"prompt": _user(q), "reference": a} for q, a in evaluation],
            "judge_train.jsonl": [],
            "judge_test.jsonl": [],
        }

    def _mismatches(self, train: list[tuple[str, str]], rng: np.random.Generator) -> list[tuple[int, int]]:
        """`preference_pairs` distinct (question, other question) index pairs whose answers differ."""
        answers = {answer for _, answer in train}
        possible = len(train) * (len(answers) - 1)  # at most: each question against every other answer
        if self.preference_pairs > possible:
            raise ConfigError(
                f"prepare.preference_pairs: {self.preference_pairs} requested, but {len(train)} training questions "
                f"with {len(answers)} distinct answers give at most {possible}"
            )
        drawn: list[tuple[int, int]] = []
        met: set[tuple[int, str]] = set()  # (question, wrong answer): a question never meets one answer twice
        while len(drawn) < self.preference_pairs:
            question, other = (int(i) for i in rng.integers(0, len(train), 2))
            if train[question][1] != train[other][1] and (question, train[other][1]) not in met:
                met.add((question, train[other][1]))
                drawn.append((question, other))
        return drawn

    def _pairs(self) -> list[tuple[str, str]]:
        """Distinct (question, answer) pairs in file order."""
        folder = Path(self.source)
        if self.source == "chatterbot-corpus":
            import chatterbot_corpus

            folder = Path(chatterbot_corpus.__file__).parent / "data" / "english"
        files = sorted(folder.glob("*.yml"))
        if not files:
            raise ConfigError(f"prepare.source: no *.yml conversation files in {folder}")
        answers: dict[str, tuple[str, str]] = {}
        for path in files:
            for turns in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("conversations") or []:
                if len(turns) < 2:
                    continue
                question, answer = (" ".join(str(turn).split()) for turn in turns[:2])
                if question and answer and len(answer.split()) <= self.max_answer_words:
                    answers.setdefault(question.lower(), (question, answer))
        return list(answers.values())


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]
