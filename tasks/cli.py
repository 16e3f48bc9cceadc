"""`rlhf stage <name>`: run one pipeline stage (what dvc.yaml and the Prefect flow call); `rlhf label`: labelling."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from tasks.labelling import cli as labelling_cli

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "TOKENIZERS_PARALLELISM": "false",
}
STAGES = ["params", "prepare", "validate", "sft", "pairs", "reward", "judge", "ppo", "evaluate"]
# Exit codes the Prefect flow reads to decide whether a retry can help.
EXIT_BAD_INPUT = 2  # invalid params or data: rerunning cannot fix it
EXIT_SERVICE_DOWN = 3  # a service (the MLflow server) or the raters did not answer: worth retrying
EXIT_BUSY = 4  # another pipeline run holds the project's lock


def _run_prepare(params, sink=None) -> dict[str, float]:
    from tasks.params import DATA_DIR
    from tasks.prepare import prepare_datasets

    counts = prepare_datasets(params.prepare, DATA_DIR)
    return {f"prepare/{Path(name).stem}_rows": float(count) for name, count in counts.items()}


def _run_validate(params, sink=None) -> dict[str, float]:
    from rlhf_lib.models.loading import load_tokenizer, resolve_model_path
    from tasks.params import DATA_DIR, REPORTS_DIR
    from tasks.validate import PromptLimit, require_valid

    resolve_model_path(params.policy)  # converts a GGUF base once, before its tokenizer loads
    limit = PromptLimit(load_tokenizer(params.policy), params.ppo.max_prompt_length)
    report = require_valid(DATA_DIR, params.validate_data, REPORTS_DIR / "validation.json", limit)
    return {"validate/success": float(report.success)}


def _stage_function(name: str):
    if name == "prepare":
        return _run_prepare
    if name == "validate":
        return _run_validate
    return importlib.import_module(f"tasks.{name}").run


def check_params(params_path: Path) -> None:
    """Stage `params`: validate the whole file and leave a constant mark for the stages after it.

    The mark's content never changes, so a valid edit reruns only the stages whose own params changed.
    """
    from rlhf_lib.io import atomic_write_json
    from tasks.params import REPORTS_DIR, load_params

    load_params(params_path)
    atomic_write_json(REPORTS_DIR / "params_check.json", {"valid": True})


def run_stage(name: str, params_path: Path, tracking: bool) -> dict[str, float]:
    """Validate all params, run one stage (inside its MLflow run), write metrics/<stage>.json.

    A training stage that `launch` gives N > 1 processes runs under `accelerate launch`: this process waits for
    them, and their main process tracks and writes the metrics.
    """
    from rlhf_lib.io import atomic_write_json
    from tasks.launch import is_main_worker, is_worker, launch_command, processes_for, run_launched
    from tasks.params import METRICS_DIR, REPORTS_DIR, load_params

    if name == "params":
        check_params(params_path)
        return {}
    params = load_params(params_path)  # every key checked before any model loads
    if not is_worker() and processes_for(name, params) > 1:
        from rlhf_lib.models.loading import resolve_model_path

        resolve_model_path(params.policy)  # a GGUF base is converted here once, not by N processes at a time
        code = run_launched(launch_command(name, params, params_path, tracking), REPORTS_DIR / f".{name}.exit")
        if code:
            raise SystemExit(code)
        return json.loads((METRICS_DIR / f"{name}.json").read_text())
    tracking = tracking and is_main_worker()
    function = _stage_function(name)
    started = time.perf_counter()
    if tracking:
        from tasks.tracking import log_stage_outputs, stage_run

        with stage_run(name, params, params_path) as sink:  # fails fast if the tracking server is down
            metrics = function(params, sink)
            metrics[f"{name}/wall_seconds"] = time.perf_counter() - started
            sink(metrics, 0)
            # Every point sent (waiting out an outage up to tracking.outage_wait_s) before the artifacts and models.
            sink.close(params.tracking.outage_wait_s, name)
            log_stage_outputs(name, params, metrics)
    else:
        metrics = function(params)
        metrics[f"{name}/wall_seconds"] = time.perf_counter() - started
    if is_main_worker():
        atomic_write_json(METRICS_DIR / f"{name}.json", metrics)
    return metrics


def summary_table(metrics_dir: Path = Path("metrics")) -> str:
    """The SFT-vs-PPO comparison from metrics/*.json, as a Markdown table (printed and sent to Prefect).

    One row per judge that ran, with the PPO win rate and the 95% paired-bootstrap interval on PPO - SFT.
    """
    evaluation = json.loads((metrics_dir / "evaluate.json").read_text())
    lines = ["| metric | SFT | PPO | PPO win rate | 95% interval, PPO - SFT |", "|---|---:|---:|---:|---:|"]
    # With tools, each judge also scored the policies answering alone (eval/without_tools/judge/...).
    for prefix, label in (("eval/judge/", "judge `{}`"), ("eval/without_tools/judge/", "judge `{}`, without tools")):
        judges = [key.split("/")[-2] for key in evaluation if key.startswith(prefix) and key.endswith("/sft")]
        for judge in judges:
            figures = {
                key.rsplit("/", 1)[1]: value for key, value in evaluation.items() if key.startswith(f"{prefix}{judge}/")
            }
            lines.append(
                f"| {label.format(judge)} | {figures['sft']:.3f} | {figures['ppo']:.3f} "
                f"| {figures['win_rate_ppo']:.3f} | [{figures['diff_ci_low']:+.3f}, {figures['diff_ci_high']:+.3f}] |"
            )
    for label, key in SUMMARY_ROWS:
        if f"eval/sft_{key}" in evaluation:  # tool calls: only with an environment
            lines.append(f"| {label} | {evaluation[f'eval/sft_{key}']:.3f} | {evaluation[f'eval/ppo_{key}']:.3f} | | |")
    lines.append(f"| KL(PPO \\|\\| SFT) per response (nats) | | {evaluation['eval/kl_ppo_to_sft']:.3f} | | |")
    for stage, key, label in HELD_OUT_ACCURACIES:
        path = metrics_dir / f"{stage}.json"
        figures = json.loads(path.read_text()) if path.is_file() else {}
        if key in figures:  # absent when the stage was skipped
            lines.append(f"| {label} | {figures[key]:.3f} | | | |")
    return "\n".join(lines)


SUMMARY_ROWS = [
    ("proxy reward (what PPO maximised)", "proxy_reward"),
    ("response words", "response_words"),
    ("distinct-2", "distinct_2"),
    ("perplexity under the SFT model", "perplexity_under_sft"),
    ("tool calls per response", "tool_calls_per_response"),
]
HELD_OUT_ACCURACIES = [
    ("reward", "reward/eval_accuracy", "reward model held-out pair accuracy"),
    ("judge", "judge/test_accuracy", "trained judge held-out accuracy"),
]


def main(argv: list[str] | None = None) -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    parser = argparse.ArgumentParser(prog="rlhf", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    stage = sub.add_parser("stage", help="run one pipeline stage")
    stage.add_argument("name", choices=STAGES)
    stage.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (params.yaml)")
    stage.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    labelling_cli.add_commands(sub)
    args = parser.parse_args(argv)
    from rlhf_lib.config import ConfigError
    from rlhf_lib.errors import RewardUnavailable
    from rlhf_lib.rewards import RewardSourceError
    from tasks.errors import TrackingUnavailableError
    from tasks.launch import is_main_worker, leave_exit_code, takes_lock
    from tasks.lock import PipelineBusyError, pipeline_lock
    from tasks.validate import DataValidationError

    if args.command == "label":
        try:
            labelling_cli.run(args)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(EXIT_BAD_INPUT) from None
        return
    lock = pipeline_lock(f"rlhf stage {args.name}") if takes_lock() else nullcontext()
    code = 0
    try:
        with lock:
            metrics = run_stage(args.name, args.params, tracking=not args.no_tracking)
        if is_main_worker():
            print(json.dumps(metrics, indent=2))
    except (ConfigError, DataValidationError, RewardSourceError) as err:  # the user's params, data or code
        print(f"error: {err}", file=sys.stderr)
        code = EXIT_BAD_INPUT
    except (TrackingUnavailableError, RewardUnavailable) as err:  # a service or people did not answer in time
        print(f"error: {err}", file=sys.stderr)
        code = EXIT_SERVICE_DOWN
    except PipelineBusyError as err:
        print(f"error: {err}", file=sys.stderr)
        code = EXIT_BUSY
    if code:
        leave_exit_code(code)
        raise SystemExit(code)


if __name__ == "__main__":
    main()
