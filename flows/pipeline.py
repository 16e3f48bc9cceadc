"""Prefect flow `rlhf-pipeline`: the DVC stages as Prefect tasks, in order, each in its own process.

Each task runs `dvc repro --single-item <stage>`, so DVC decides whether the stage is stale and
records what ran in dvc.lock: after a flow run, `dvc repro` finds everything up to date, and a
flow run after a finished `dvc repro` skips every stage. A stage that fails for a transient reason
is retried (training resumes from its last checkpoint); invalid params or data are not retried.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from rlhf_lib.io import atomic_write_text
from tasks.cli import EXIT_BAD_INPUT, OFFLINE_ENV, STAGES, summary_table
from tasks.params import load_params
from tasks.tracking import PIPELINE_RUN_ENV

PARAMS_FILE = Path("params.yaml")
OUTPUT_TAIL_LINES = 40
_EXIT_CODE = re.compile(r"exited with (-?\d+)")


class StageFailed(RuntimeError):
    """A stage's command failed; `exit_code` is the stage's own code when DVC reported it."""

    def __init__(self, stage: str, exit_code: int | None, output_tail: str) -> None:
        self.stage, self.exit_code = stage, exit_code
        super().__init__(f"stage {stage} failed (exit code {exit_code}):\n{output_tail}")


def _retry_helps(task_, task_run, state) -> bool:
    error = state.result(raise_on_failure=False)
    return not (isinstance(error, StageFailed) and error.exit_code == EXIT_BAD_INPUT)


def _stage_env() -> dict[str, str]:
    env = {**os.environ, **OFFLINE_ENV}
    # `rlhf` and `dvc` live beside this interpreter; a worker's PATH may not include them.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if flow_run.id:
        env[PIPELINE_RUN_ENV] = str(flow_run.id)  # one MLflow parent run per flow run
        env["RLHF_PREFECT_FLOW_RUN_ID"] = str(flow_run.id)
    return env


@task(retries=1, retry_delay_seconds=5, retry_condition_fn=_retry_helps, task_run_name="stage-{stage}")
def run_stage(stage: str) -> str:
    """`dvc repro --single-item <stage>`, streaming its output; returns what DVC said it did."""
    logger = get_run_logger()
    dvc = Path(sys.executable).parent / "dvc"
    command = [str(dvc if dvc.exists() else "dvc"), "repro", "--single-item", stage]
    logger.info("running %s", " ".join(command))
    tail: deque[str] = deque(maxlen=OUTPUT_TAIL_LINES)
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_stage_env()
    ) as process:
        for line in process.stdout:
            print(line, end="", flush=True)
            tail.append(line.rstrip())
    if process.returncode != 0:
        code = next((int(m.group(1)) for line in reversed(tail) if (m := _EXIT_CODE.search(line))), None)
        raise StageFailed(stage, code, "\n".join(tail))
    skipped = any("didn't change, skipping" in line for line in tail)
    return "up to date" if skipped else "ran"


def write_params(profile: str | None, overrides: dict[str, Any] | None) -> None:
    """Copy a profile over params.yaml and apply dotted-key overrides; validated before any stage runs."""
    if profile is None and not overrides:
        return
    source = Path(profile) if profile else PARAMS_FILE
    if not source.is_file():
        raise FileNotFoundError(f"profile {source} does not exist")
    if not overrides:  # a verbatim copy keeps the profile's comments
        atomic_write_text(PARAMS_FILE, source.read_text())
        return
    params = yaml.safe_load(source.read_text()) or {}
    for dotted, value in (overrides or {}).items():
        *parents, leaf = dotted.split(".")
        node = params
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    atomic_write_text(PARAMS_FILE, yaml.safe_dump(params, sort_keys=False))


@flow(name="rlhf-pipeline", log_prints=False)
def rlhf_pipeline(profile: str | None = None, overrides: dict[str, Any] | None = None) -> dict[str, str]:
    """Validate data, train SFT -> reward model (and the held-out judge) -> PPO, evaluate, in DVC's order.

    profile: a params file copied over params.yaml first (e.g. "profiles/smoke.yaml"); None keeps params.yaml.
    overrides: dotted keys written into params.yaml, e.g. {"ppo.kl_coef": 0.1}.
    """
    write_params(profile, overrides)
    load_params(PARAMS_FILE)  # every key checked before any stage starts
    outcome = {}
    for stage in STAGES:  # sequential: each stage needs the one before, and 2 cores gain nothing from overlap
        outcome[stage] = run_stage(stage)
    summary = summary_table()
    create_markdown_artifact(markdown=f"# SFT vs PPO\n\n{summary}\n", key="rlhf-evaluation")
    get_run_logger().info("evaluation summary:\n%s", summary)
    return outcome


if __name__ == "__main__":
    rlhf_pipeline()
