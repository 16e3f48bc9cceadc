"""Prepare stage: ingest the datasets a params file names and write the pipeline's canonical files.

Either a recipe's builder writes them (`prepare.builder`, e.g. the sentiment recipe carving movie reviews), or
they are read from sources in the formats TRL users know and normalised:

| file | formats |
|---|---|
| sft.jsonl | `text`; `prompt_completion` (strings or messages); `messages` |
| preference.jsonl | `preference`: `chosen`/`rejected`, with or without `prompt`, strings or messages |
| ppo_prompts.jsonl, eval_prompts.jsonl | `prompt` (a string or messages; eval rows may carry a `reference`) |
| judge_train.jsonl, judge_test.jsonl | `labelled`: `text` and a 0/1 `label` |

Normalising renames mapped columns and keeps the format's columns (dropping ids and metadata): rows that do not
fit their declared format go through otherwise as they are, so that `validate` names the expectation they break
(manifest.json tells it each file's format).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rlhf_lib.config import ConfigError, DataConfig, build_config
from rlhf_lib.data.sources import DataSourceError, load_rows
from rlhf_lib.io import atomic_write_json, atomic_write_jsonl
from rlhf_lib.rewards import RewardSourceError, import_callable

MANIFEST = "manifest.json"
Format = Literal["text", "prompt_completion", "messages", "preference", "prompt", "labelled"]
FILE_FORMATS: dict[str, tuple[str, ...]] = {
    "sft.jsonl": ("text", "prompt_completion", "messages"),
    "preference.jsonl": ("preference",),
    "ppo_prompts.jsonl": ("prompt",),
    "eval_prompts.jsonl": ("prompt",),
    "judge_train.jsonl": ("labelled",),
    "judge_test.jsonl": ("labelled",),
}
PREPARED_FILES = tuple(FILE_FORMATS)
# The columns each format keeps; a source's other columns (ids, metadata) are dropped on the way in.
FORMAT_COLUMNS: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
    "preference": ("prompt", "chosen", "rejected"),
    "prompt": ("prompt", "reference"),
    "labelled": ("text", "label"),
}
# Config key -> the file its rows go to (judge rows are split into judge_train and judge_test).
SOURCE_FILES = {
    "sft": "sft.jsonl",
    "preference": "preference.jsonl",
    "prompts": "ppo_prompts.jsonl",
    "evaluation": "eval_prompts.jsonl",
    "judge": "judge_train.jsonl",
}


class DatasetSource(BaseModel):
    """One dataset to ingest."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    source: str
    """A local .jsonl/.json/.csv/.parquet file, a saved dataset folder, or a Hub dataset name."""
    split: str = "train"
    """Split of a Hub dataset or a saved DatasetDict."""
    format: Format
    """What the rows hold (see the table in tasks/prepare.py); `validate` checks every row against it."""
    columns: dict[str, str] = {}
    """Canonical column -> the column that holds it in the source, e.g. {prompt: question, completion: answer}."""
    max_rows: int | None = Field(None, gt=0)
    """Keep at most this many rows (a seeded sample); None keeps all."""

    @model_validator(mode="after")
    def _maps_to_the_formats_columns(self) -> DatasetSource:
        unknown = sorted(set(self.columns) - set(FORMAT_COLUMNS[self.format]))
        if unknown:
            wanted = FORMAT_COLUMNS[self.format]
            raise ValueError(f"columns: {unknown} are not columns of format {self.format!r} {wanted}")
        if len(set(self.columns.values())) != len(self.columns):
            raise ValueError(f"columns: two canonical columns map to one source column in {self.columns}")
        return self


class PrepareConfig(BaseModel):
    """Where the pipeline's data comes from: a recipe's builder (with its own settings) or dataset sources."""

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)

    builder: str | None = None
    """`module:Class` of a recipe's data builder, a pydantic model whose fields are the other keys of this
    section and whose `build(out_dir)` writes the canonical files (e.g. `recipes.sentiment.data:SentimentData`)."""
    seed: int = 0
    """Seed of every shuffle and split: the same seed writes byte-identical files."""
    sft: DatasetSource | None = None
    """SFT data (`text`, `prompt_completion` or `messages`)."""
    preference: DatasetSource | None = None
    """Preference pairs for the reward model; needed when a reward source is `trained`."""
    prompts: DatasetSource | None = None
    """PPO prompts (`prompt`)."""
    evaluation: DatasetSource | None = None
    """Held-out evaluation prompts (`prompt`, optionally with `reference`); None: a seeded split of `prompts`."""
    evaluation_count: int = Field(64, gt=0)
    """How many prompts the seeded split holds out for evaluation when `evaluation` is None."""
    judge: DatasetSource | None = None
    """Labelled texts (`labelled`) for a `trained` judge; split into judge_train and judge_test."""
    judge_test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    """Share of the judge's rows held out to measure its accuracy."""

    @model_validator(mode="after")
    def _builder_or_sources(self) -> PrepareConfig:
        if self.builder is None:
            if self.model_extra:
                raise ValueError(f"unknown key(s) {sorted(self.model_extra)} (without a builder)")
            missing = [name for name in ("sft", "prompts") if getattr(self, name) is None]
            if missing:
                raise ValueError(f"name a source for {missing}, or a recipe's builder")
            for name, file in SOURCE_FILES.items():
                spec = getattr(self, name)
                if spec is not None and spec.format not in FILE_FORMATS[file]:
                    raise ValueError(f"{name}.format: {spec.format!r} is not one of {list(FILE_FORMATS[file])}")
        else:
            ignored = [name for name in SOURCE_FILES if getattr(self, name)]
            ignored += sorted({"evaluation_count", "judge_test_fraction"} & self.model_fields_set)
            if ignored:
                raise ValueError(f"{ignored}: a builder writes every file itself; remove these or the builder")
            self.builder_settings()  # the builder's own keys are checked now, before any stage runs
        return self

    def builder_settings(self) -> Any:
        """The builder's settings: this section's other keys (and the seed), validated by the builder's class."""
        try:
            builder = import_callable(self.builder, "prepare.builder")
        except RewardSourceError as err:
            raise ConfigError(str(err)) from None
        return build_config(builder, {**(self.model_extra or {}), "seed": self.seed}, "prepare")


def prepare_datasets(cfg: PrepareConfig, out_dir: Path) -> dict[str, int]:
    """Write the canonical files and manifest.json into `out_dir`; return each file's row count.

    Every source is read before the first file is written, so a missing file or column mapping to nowhere
    leaves earlier outputs in place.
    """
    if cfg.builder is not None:
        formats = cfg.builder_settings().build(out_dir)
    else:
        records, formats = _ingest(cfg)
        for name in PREPARED_FILES:
            atomic_write_jsonl(out_dir / name, records[name])  # an unused file is empty, so DVC's deps exist
    atomic_write_json(out_dir / MANIFEST, {name: formats.get(name) for name in PREPARED_FILES})
    return {name: _count_lines(out_dir / name) for name in PREPARED_FILES}


def _ingest(cfg: PrepareConfig) -> tuple[dict[str, list[dict]], dict[str, str | None]]:
    # A generator per purpose: sampling one source differently never reshuffles another or the eval split.
    rngs = {name: np.random.default_rng([cfg.seed, index]) for index, name in enumerate([*SOURCE_FILES, "split"])}
    read = {name: _read(getattr(cfg, name), name, rngs[name]) for name in SOURCE_FILES}
    prompts, eval_prompts = read["prompts"], read["evaluation"]
    if cfg.evaluation is None:
        if cfg.evaluation_count >= len(prompts):
            raise ConfigError(
                f"prepare.evaluation_count: {cfg.evaluation_count} held out of {len(prompts)} prompts leaves none "
                "for PPO"
            )
        order = rngs["split"].permutation(len(prompts))
        eval_prompts = [prompts[i] for i in order[: cfg.evaluation_count]]
        prompts = [prompts[i] for i in sorted(order[cfg.evaluation_count :])]
    judge = read["judge"]
    held_out = int(round(len(judge) * cfg.judge_test_fraction))
    if judge and not 0 < held_out < len(judge):
        raise ConfigError(
            f"prepare.judge_test_fraction: {cfg.judge_test_fraction} of {len(judge)} judge rows leaves an empty split"
        )
    records = {
        "sft.jsonl": read["sft"],
        "preference.jsonl": [_with_prompt(row) for row in read["preference"]],
        "ppo_prompts.jsonl": prompts,
        "eval_prompts.jsonl": eval_prompts,
        "judge_train.jsonl": judge[held_out:],
        "judge_test.jsonl": judge[:held_out],
    }
    formats = {
        "sft.jsonl": cfg.sft.format,
        "preference.jsonl": "preference" if cfg.preference else None,
        "ppo_prompts.jsonl": "prompt",
        "eval_prompts.jsonl": "prompt",
        "judge_train.jsonl": "labelled" if cfg.judge else None,
        "judge_test.jsonl": "labelled" if cfg.judge else None,
    }
    return records, formats


def _read(spec: DatasetSource | None, key: str, rng: np.random.Generator) -> list[dict[str, Any]]:
    """The source's rows with mapped columns renamed, in a seeded order (sampled down to max_rows)."""
    if spec is None:
        return []
    path = Path(spec.source)
    try:
        # JSON lines are read as written: a datasets table would coerce mixed rows to one schema and hide them.
        if path.suffix == ".jsonl":
            rows = _read_jsonl(path)
        else:
            rows = _without_nulls(load_rows(DataConfig(source=spec.source, split=spec.split)).to_list())
    except DataSourceError as err:
        raise ConfigError(f"prepare.{key}.source: {err}".replace("data.source: ", "")) from None
    if not rows:
        raise ConfigError(f"prepare.{key}.source: {spec.source} has no rows")
    found = set().union(*(row.keys() for row in rows))
    shadowed = sorted(found & set(spec.columns) - set(spec.columns.values()))
    if shadowed:
        raise ConfigError(
            f"prepare.{key}.columns: {spec.source} already has column(s) {shadowed}, which the mapping would overwrite"
        )
    unmapped = {canonical: column for canonical, column in spec.columns.items() if column not in found}
    if unmapped:
        raise ConfigError(
            f"prepare.{key}.columns: {unmapped} name columns that {spec.source} lacks (it has {sorted(found)})"
        )
    canonical = {column: name for name, column in spec.columns.items()}
    kept = FORMAT_COLUMNS[spec.format]
    renamed = [{canonical.get(k, k): v for k, v in row.items() if canonical.get(k, k) in kept} for row in rows]
    order = rng.permutation(len(renamed))
    if spec.max_rows is not None:
        order = order[: spec.max_rows]
    return [renamed[i] for i in order]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataSourceError(f"file not found: {path}")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataSourceError(f"{path}:{number} is not JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise DataSourceError(f"{path}:{number} is a JSON {type(row).__name__}, not an object with columns")
        rows.append(row)
    return rows


def _without_nulls(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # A table fills keys a row lacks with None; dropping them gives back each row's own keys.
    return [{key: value for key, value in row.items() if value is not None} for row in rows]


def _with_prompt(row: dict[str, Any]) -> dict[str, Any]:
    """A preference row without a prompt gets an empty one of the answers' kind ("" or no messages)."""
    if "prompt" in row:
        return row
    return {"prompt": [] if isinstance(row.get("chosen"), list) else "", **row}


def _count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.is_file() else 0
