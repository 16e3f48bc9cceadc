"""MLflow tracking: one parent run per pipeline run, one nested run per stage.

Stages run in separate processes (DVC or Prefect start them), so the parent run is found by a
tag: the Prefect flow run id when there is one, else a key from the git commit and params.yaml,
which all stages of one `dvc repro` share.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException

from rlhf_lib.callbacks import MetricsSink
from rlhf_lib.precision import default_bf16
from tasks import registry
from tasks.buffered_sink import BufferedMetricsSink, is_outage
from tasks.errors import TrackingUnavailableError
from tasks.params import METRICS_DIR, MODELS_DIR, REPORTS_DIR, TRAINER_SECTIONS, PipelineParams

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
PIPELINE_RUN_ENV = "RLHF_PIPELINE_RUN_ID"
PIPELINE_TAG = "rlhf.pipeline_run"
ROLE_TAG = "rlhf.role"
PROBE_TIMEOUT_SECONDS = 5.0
# MLflow's client retries a failed request 7 times by default, about 4 minutes of backoff on every call during an
# outage; 3 keeps training moving, and BufferedMetricsSink keeps the points the retries do not save.
HTTP_RETRIES = "3"
# The figures a pipeline run is judged by, copied onto its parent run so the runs table compares pipelines.
HEADLINE_METRICS = (
    "eval/ppo_judge_score",
    "eval/sft_judge_score",
    "eval/judge_win_rate_ppo",
    "eval/judge_diff_ci_low",
    "eval/judge_diff_ci_high",
    "eval/kl_ppo_to_sft",
    "eval/ppo_proxy_reward",
    "eval/sft_proxy_reward",
    "reward/eval_accuracy",
    "judge/test_accuracy",
    "ppo/final_scores",
    "ppo/final_kl",
)
KL_KEY = "ppo/held_out/kl"
# Stage outputs kept in git: their changes describe a run's results, not its inputs.
OUTPUT_FOLDERS = ("metrics/", "reports/")


def configure(experiment: str, fallback_to_local: bool = False) -> str:
    """Point MLflow at MLFLOW_TRACKING_URI (else the project's SQLite store); return the URI in use.

    A remote server is probed first, so an unreachable one fails in seconds rather than after
    MLflow's own retries, which take minutes and come after the training.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)
    if uri.startswith(("http://", "https://")) and (problem := _unreachable(uri)):
        if not fallback_to_local:
            raise TrackingUnavailableError(
                f"MLflow tracking server {uri} is unreachable ({problem}); start it, unset MLFLOW_TRACKING_URI, "
                "or set tracking.fallback_to_local: true to log to the local store"
            )
        uri = DEFAULT_TRACKING_URI
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", HTTP_RETRIES)
    mlflow.set_tracking_uri(uri)
    found = mlflow.set_experiment(experiment)
    if "mlflow.experimentKind" not in found.tags:  # open on the runs table, not MLflow's GenAI overview
        kind = "custom_model_development"
        mlflow.MlflowClient().set_experiment_tag(found.experiment_id, "mlflow.experimentKind", kind)
    return uri


def _unreachable(uri: str) -> str | None:
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_SECONDS):
            return None
    except (urllib.error.URLError, OSError) as err:
        return str(getattr(err, "reason", err))


def git_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    return result.stdout.strip() or "unknown"


def git_dirty_files() -> list[str]:
    """Tracked files (code, params, dvc.yaml, dvc.lock) that differ from the commit, and dvc.lock if it was
    never committed: what the commit tag alone does not describe. Outputs kept in git are left out."""
    result = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=False
    )
    dirty = {line[3:].strip() for line in result.stdout.splitlines() if line.strip()}
    lock_is_tracked = subprocess.run(["git", "ls-files", "--error-unmatch", "dvc.lock"], capture_output=True)
    if Path("dvc.lock").is_file() and lock_is_tracked.returncode != 0:
        dirty.add("dvc.lock")
    return sorted(path for path in dirty if not path.startswith(OUTPUT_FOLDERS))


def pipeline_run_key(params_path: Path) -> str:
    """The Prefect flow run id if set, else a hash of the git commit and params.yaml."""
    if key := os.environ.get(PIPELINE_RUN_ENV):
        return key
    digest = hashlib.sha256(git_commit().encode() + params_path.read_bytes()).hexdigest()[:16]
    return f"local-{digest}"


def _parent_run_id(key: str, tags: dict[str, str], params: dict[str, str]) -> str:
    """The pipeline's parent run, created with the resolved params on first use."""
    # Stage runs carry the pipeline tag too (so a search finds all of them); the role tells the parent apart.
    query = f"tags.`{PIPELINE_TAG}` = '{key}' and tags.`{ROLE_TAG}` = 'pipeline'"
    found = mlflow.search_runs(filter_string=query, max_results=1, output_format="list")
    if found:
        return found[0].info.run_id
    with mlflow.start_run(run_name=f"pipeline {key}", tags={**tags, ROLE_TAG: "pipeline"}) as run:
        mlflow.log_params(params)
        return run.info.run_id


def dvc_data_hashes() -> dict[str, str]:
    """md5 of each data output as dvc.lock records it now, so a run names the exact data it used.

    DVC writes a stage's entry when the stage ends, so a stage reading the data sees its current hash.
    """
    lock = Path("dvc.lock")
    if not lock.is_file():
        return {}
    import yaml

    hashes = {}
    for stage in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).values():
        for out in stage.get("outs", []):
            if str(out.get("path", "")).startswith("data/"):
                hashes[f"dvc.{out['path']}"] = out.get("md5", "")
    return hashes


def lineage_tags(stage: str) -> dict[str, str]:
    """The commit, whether params.yaml/dvc.yaml/dvc.lock differ from it, and the data hashes in dvc.lock.

    `prepare` writes the data, so dvc.lock holds the previous data's hashes while it runs: it tags none.
    """
    dirty = git_dirty_files()
    tags = {
        "rlhf.git_commit": git_commit(),
        "rlhf.git_dirty": str(bool(dirty)).lower(),
        "rlhf.git_dirty_files": ", ".join(dirty),  # empty when clean, replacing an earlier stage's list
        # What `bf16: null` means in this process (hardware or RLHF_DEFAULT_PRECISION, which DVC does not track).
        "rlhf.default_precision": "bf16" if default_bf16() else "fp32",
    }
    return tags if stage == "prepare" else tags | dvc_data_hashes()


@contextmanager
def stage_run(stage: str, params: PipelineParams, params_path: Path) -> Iterator[MetricsSink]:
    """Open the stage's nested run under the pipeline's parent; yield a sink that logs metrics to it.

    The sink rides out a server outage (BufferedMetricsSink); an outage that outlasts the stage fails it, naming
    the server, once its outputs are saved.
    """
    uri = configure(params.tracking.experiment, params.tracking.fallback_to_local)
    registry.require_own_names(params.tracking)
    key = pipeline_run_key(params_path)
    tags = {PIPELINE_TAG: key, registry.RECIPE_TAG: params.tracking.recipe, **lineage_tags(stage)}
    if flow_run := os.environ.get("RLHF_PREFECT_FLOW_RUN_ID"):
        tags["prefect.flow_run_id"] = flow_run
    resolved = _flatten(resolved_params(params))
    parent = _parent_run_id(key, tags, resolved)
    mlflow.MlflowClient().log_batch(parent, tags=[RunTag(k, v) for k, v in tags.items()])  # the newest lineage
    tags |= {"rlhf.stage": stage, ROLE_TAG: "stage"}
    try:
        with mlflow.start_run(run_id=parent), mlflow.start_run(run_name=stage, nested=True, tags=tags) as run:
            mlflow.log_params(resolved)
            sink = BufferedMetricsSink(mlflow.MlflowClient(), run.info.run_id, uri)
            yield sink
            sink.close(params.tracking.outage_wait_s, stage)  # a no-op once the stage has closed it
    except MlflowException as err:
        if not is_outage(err):
            raise
        raise TrackingUnavailableError(
            f"MLflow server {uri} unreachable at the end of stage {stage} ({err}). The stage's checkpoints and "
            "outputs are saved; rerun it once the server is back"
        ) from err


def log_stage_outputs(stage: str, params: PipelineParams, metrics: dict[str, float]) -> None:
    """Log what a finished stage produced, beyond its metrics, to the active stage run; headline metrics and
    the registered policy also go to the pipeline's parent run."""
    client = mlflow.MlflowClient()
    parent = mlflow.active_run().data.tags["mlflow.parentRunId"]
    headline = [Metric(key, metrics[key], int(time.time() * 1000), 0) for key in HEADLINE_METRICS if key in metrics]
    client.log_batch(parent, metrics=headline)
    if stage == "validate":
        mlflow.log_artifact(str(REPORTS_DIR / "validation.json"))
    elif stage == "reward" and params.tracking.log_models and params.trains_reward_model():
        name = params.tracking.reward_model_name
        registry.log_model(MODELS_DIR / "reward", "reward_model", name, "text-classification", params.tracking.recipe)
    elif stage == "ppo":
        from tasks.plots import ppo_curves

        history = METRICS_DIR / "ppo_history.csv"
        mlflow.log_artifact(str(history))
        mlflow.log_figure(ppo_curves(history), "ppo_curves.png")
        _log_held_out_figure(client, mlflow.active_run().info.run_id)
    elif stage == "evaluate":
        samples = json.loads((REPORTS_DIR / "samples.json").read_text())  # columns in the file's order
        mlflow.log_table({key: [row[key] for row in samples] for key in samples[0]}, "samples.json")
        if params.tracking.log_models:
            name = params.tracking.policy_model_name
            version = registry.log_model(MODELS_DIR / "ppo", "policy", name, "text-generation", params.tracking.recipe)
            budget, judge = params.tracking.promotion_kl_budget, params.promotion_judge()
            decision = registry.promote_candidate(name, version, metrics, budget, judge, params.tracking.approval)
            mlflow.log_metric("eval/promoted", float(decision.promoted))
            promotion = {
                "rlhf.promotion": f"{name} v{version}: {decision.reason}",
                "rlhf.policy": f"models:/{name}/{version}",
            }
            mlflow.set_tags(promotion)
            promoted = Metric("eval/promoted", float(decision.promoted), int(time.time() * 1000), 0)
            client.log_batch(parent, metrics=[promoted], tags=[RunTag(k, v) for k, v in promotion.items()])


def _log_held_out_figure(client: mlflow.MlflowClient, run_id: str) -> None:
    """Reward and judges against KL on held-out prompts (logged when ppo.eval_steps is set)."""
    from tasks.plots import held_out_against_kl

    keys = [key for key in client.get_run(run_id).data.metrics if key.startswith("ppo/held_out/") and key != KL_KEY]
    if not keys:
        return
    history = {key: {m.step: m.value for m in client.get_metric_history(run_id, key)} for key in [KL_KEY, *keys]}
    steps = sorted(history[KL_KEY])
    curves = {key.removeprefix("ppo/held_out/"): [history[key][step] for step in steps] for key in keys}
    mlflow.log_figure(held_out_against_kl([history[KL_KEY][s] for s in steps], curves), "held_out_vs_kl.png")


def resolved_params(params: PipelineParams) -> dict[str, Any]:
    """params.yaml with every trainer section filled in with its defaults (what the stages really use)."""
    return params.model_dump(by_alias=True, exclude={name: {"output_dir"} for name in TRAINER_SECTIONS})


def _flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:500]  # MLflow caps param values
    return flat
