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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow

from rlhf_lib.callbacks import MetricsSink

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
PIPELINE_RUN_ENV = "RLHF_PIPELINE_RUN_ID"
PIPELINE_TAG = "rlhf.pipeline_run"


def configure(experiment: str) -> None:
    """Point MLflow at MLFLOW_TRACKING_URI or the project's SQLite store, and select the experiment."""
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI))
    mlflow.set_experiment(experiment)


def git_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    return result.stdout.strip() or "unknown"


def pipeline_run_key(params_path: Path) -> str:
    """The Prefect flow run id if set, else a hash of the git commit and params.yaml."""
    if key := os.environ.get(PIPELINE_RUN_ENV):
        return key
    digest = hashlib.sha256(git_commit().encode() + params_path.read_bytes()).hexdigest()[:16]
    return f"local-{digest}"


def _parent_run_id(key: str) -> str:
    found = mlflow.search_runs(filter_string=f"tags.`{PIPELINE_TAG}` = '{key}'", max_results=1, output_format="list")
    if found:
        return found[0].info.run_id
    with mlflow.start_run(run_name=f"pipeline {key}", tags={PIPELINE_TAG: key, "rlhf.git_commit": git_commit()}) as run:
        return run.info.run_id


def dvc_data_hashes() -> dict[str, str]:
    """md5 of each stage output recorded in dvc.lock, so a run names the exact data it used."""
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


@contextmanager
def stage_run(stage: str, experiment: str, params_path: Path, params: dict[str, Any]) -> Iterator[MetricsSink]:
    """Open the stage's nested run under the pipeline's parent; yield a sink that logs metrics to it."""
    configure(experiment)
    key = pipeline_run_key(params_path)
    parent = _parent_run_id(key)
    tags = {PIPELINE_TAG: key, "rlhf.stage": stage, "rlhf.git_commit": git_commit(), **dvc_data_hashes()}
    if flow_run := os.environ.get("PREFECT__FLOW_RUN_ID"):
        tags["prefect.flow_run_id"] = flow_run
    with mlflow.start_run(run_id=parent), mlflow.start_run(run_name=stage, nested=True, tags=tags):
        mlflow.log_params(_flatten(params))

        def sink(metrics: dict[str, float], step: int) -> None:
            mlflow.log_metrics(metrics, step=step)

        yield sink


def log_json_artifact(data: Any, name: str) -> None:
    mlflow.log_text(json.dumps(data, indent=2), name)


def _flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:500]  # MLflow caps param values
    return flat
