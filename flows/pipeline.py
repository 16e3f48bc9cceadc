"""Prefect flow `rlhf-pipeline`: the DVC stages as Prefect tasks, in order, each in its own process.

Each task runs `dvc repro --single-item <stage>`, so DVC decides whether the stage is stale and
records what ran in dvc.lock: after a flow run on params.yaml, `dvc repro` finds everything up to
date, and a flow run after a finished `dvc repro` skips every stage. A stage that fails for a
transient reason is retried (training resumes from its last checkpoint); invalid params or data are
not retried. Every finished run is saved as a DVC experiment; a run with a profile or overrides
uses them for itself only and leaves params.yaml byte for byte as it found it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.states import Failed, State

from flows.approval import await_approval
from rlhf_lib.config import ConfigError
from rlhf_lib.io import atomic_write_bytes, atomic_write_text
from tasks import registry
from tasks.cli import EXIT_BAD_INPUT, EXIT_BUSY, OFFLINE_ENV, STAGES, summary_table
from tasks.lock import PipelineBusyError, pipeline_lock
from tasks.params import params_from_text
from tasks.tracking import PIPELINE_RUN_ENV
from tasks.tracking import configure as configure_tracking

PARAMS_FILE = Path("params.yaml")
# Where the untracked files a DVC experiment of a flow run must hold live (cache: false outputs, in git).
EXPERIMENT_FILES = ("dvc.lock", "metrics", "reports")
PARAMS_BACKUP = Path(".params.yaml.before-run")
OUTPUT_TAIL_LINES = 40
PROGRESS_LOG_SECONDS = 10.0
_EXIT_CODE = re.compile(r"exited with (-?\d+)")
_PROGRESS = re.compile(r"\d+/\d+ \[[^\]]*(it/s|s/it|step/s|s/step)")


class StageFailed(RuntimeError):
    """A stage's command failed; `exit_code` is the stage's own code when DVC reported it."""

    def __init__(self, stage: str, exit_code: int | None, output_tail: str) -> None:
        self.stage, self.exit_code = stage, exit_code
        super().__init__(f"stage {stage} failed (exit code {exit_code}):\n{output_tail}")


def _retry_helps(task_, task_run, state) -> bool:
    error = state.result(raise_on_failure=False)
    return not (isinstance(error, StageFailed) and error.exit_code in (EXIT_BAD_INPUT, EXIT_BUSY))


def _stage_env() -> dict[str, str]:
    env = {**os.environ, **OFFLINE_ENV}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if flow_run.id:
        env[PIPELINE_RUN_ENV] = str(flow_run.id)  # one MLflow parent run per flow run
        env["RLHF_PREFECT_FLOW_RUN_ID"] = str(flow_run.id)
    return env


@task(retries=1, retry_delay_seconds=5, retry_condition_fn=_retry_helps, task_run_name="stage-{stage}")
def run_stage(stage: str) -> str:
    """`dvc repro --single-item <stage>` unless DVC finds the stage up to date; its output goes to the Prefect logs.

    Returns "up to date" or "ran".
    """
    logger = get_run_logger()
    if stage_is_up_to_date(stage):
        logger.info("stage %s is up to date (dvc status)", stage)
        return "up to date"
    command = [_tool("dvc"), "repro", "--single-item", stage]
    logger.info("running %s", " ".join(command))
    tail: deque[str] = deque(maxlen=OUTPUT_TAIL_LINES)
    last_progress = 0.0
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_stage_env()
    ) as process:
        for line in process.stdout:  # text mode splits progress bars' carriage returns into lines too
            line = line.rstrip()
            tail.append(line)
            if not _PROGRESS.search(line):
                logger.info(line)
            elif time.monotonic() - last_progress > PROGRESS_LOG_SECONDS:  # bars redraw many times a second
                logger.info(line)
                last_progress = time.monotonic()
    if process.returncode != 0:
        code = next((int(m.group(1)) for line in reversed(tail) if (m := _EXIT_CODE.search(line))), None)
        raise StageFailed(stage, code, "\n".join(tail))
    return "ran"


def stage_is_up_to_date(stage: str) -> bool:
    """What `dvc status --json <stage>` says: the stage is listed only when something it depends on changed."""
    result = subprocess.run(
        [_tool("dvc"), "status", "--json", stage], capture_output=True, text=True, env=_stage_env(), check=False
    )
    if result.returncode != 0:
        return False  # let `dvc repro` run and report the problem in full
    return stage not in json.loads(result.stdout or "{}")


def _tool(name: str) -> str:
    # `rlhf` and `dvc` live beside this interpreter; a worker's PATH may not include them.
    path = Path(sys.executable).parent / name
    return str(path if path.exists() else name)


def run_params_text(profile: str | None, overrides: dict[str, Any] | None) -> str | None:
    """The params file this run uses, as text, or None to use params.yaml as it is; validated in memory.

    profile: a params file that replaces params.yaml for this run; overrides: dotted keys set on top.
    Raises ConfigError naming the bad key; nothing is written either way.
    """
    if profile is None and not overrides:
        return None
    source = Path(profile) if profile else PARAMS_FILE
    if not source.is_file():
        raise ConfigError(f"profile {source} does not exist")
    text = source.read_text()
    if overrides:
        params = yaml.safe_load(text) or {}
        for dotted, value in overrides.items():
            *parents, leaf = dotted.split(".")
            node = params
            for key in parents:
                node = node.setdefault(key, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"override {dotted}: {key} is not a section")
            node[leaf] = value
        text = yaml.safe_dump(params, sort_keys=False)
    params_from_text(text)  # every key checked before anything is written
    return text


@contextmanager
def params_for_this_run(text: str | None) -> Iterator[None]:
    """params.yaml holds `text` inside the block, and exactly its old bytes again after it, pass or fail.

    DVC's stages read params.yaml; the run's own params go there only while it runs, and are kept
    afterwards in its DVC experiment.
    """
    if text is None:
        yield
        return
    original = PARAMS_FILE.read_bytes()
    atomic_write_bytes(PARAMS_BACKUP, original)  # what a killed run leaves to restore from
    atomic_write_text(PARAMS_FILE, text)
    try:
        yield
    finally:
        if PARAMS_FILE.read_text() == text:
            atomic_write_bytes(PARAMS_FILE, original)
            PARAMS_BACKUP.unlink()
        else:  # someone edited params.yaml during the run: keep their edit, and the original beside it
            logging.getLogger(__name__).warning(
                "params.yaml was edited during the run: kept; the original is in %s", PARAMS_BACKUP
            )


def require_experiment_name(name: str) -> None:
    """A DVC experiment name must be a valid git ref name; checked before any stage runs."""
    check = subprocess.run(["git", "check-ref-format", f"refs/exps/{name}"], capture_output=True)
    if check.returncode != 0 or "/" in name:
        raise ConfigError(f"experiment {name!r}: not a valid DVC experiment name (letters, digits, - _ .)")


def save_experiment(name: str) -> None:
    """Record the workspace (params, dvc.lock, metrics, reports) as DVC experiment `name`, for `dvc exp show`."""
    logger = get_run_logger()
    command = [_tool("dvc"), "exp", "save", "--force", "--name", name]
    # The untracked, unignored files only: a folder would bring in what .gitignore keeps out.
    untracked = subprocess.run(
        ["git", "ls-files", "--others", "--exclude-standard", "--", *EXPERIMENT_FILES], capture_output=True, text=True
    ).stdout.split()
    command += [arg for path in untracked for arg in ("--include-untracked", path)]
    result = subprocess.run(command, capture_output=True, text=True, env=_stage_env())
    if result.returncode == 0:
        logger.info("saved as DVC experiment %s (dvc exp show; dvc exp apply %s)", name, name)
    else:  # e.g. not a git repository with a commit: the run itself still succeeded
        logger.warning("could not save DVC experiment %s: %s", name, (result.stderr or result.stdout).strip())


@flow(name="rlhf-pipeline", log_prints=False)
def rlhf_pipeline(
    profile: str | None = None, overrides: dict[str, Any] | None = None, experiment: str | None = None
) -> State | dict[str, str]:
    """Validate data, train SFT -> reward model (and the held-out judge) -> PPO, evaluate, in DVC's order.

    profile: a params file used instead of params.yaml for this run (e.g. "profiles/smoke.yaml").
    overrides: dotted keys set for this run, e.g. {"ppo.kl_coef": 0.1}.
    experiment: name of the DVC experiment that records the run (one of the same name is replaced);
        default: the flow run's name.
    params.yaml is left as it was: the run's params live in its experiment (`dvc exp apply <name>`).
    One run at a time per project folder: a second fails at once, naming the lock (tasks/lock.py).
    """
    logger = get_run_logger()
    experiment = experiment or flow_run.name or "prefect-run"
    try:
        require_experiment_name(experiment)
        text = run_params_text(profile, overrides)
        run_params = params_from_text(PARAMS_FILE.read_text() if text is None else text)
    except ConfigError as err:
        logger.error("invalid params, nothing was run or written:\n%s", err)
        return Failed(message=f"invalid params: {err}")
    outcome = {}
    try:
        with pipeline_lock(f"flow run {flow_run.name or experiment}"), params_for_this_run(text):
            for stage in STAGES:  # sequential: each stage needs the one before; 2 cores gain nothing from overlap
                outcome[stage] = run_stage(stage)
            save_experiment(experiment)
    except PipelineBusyError as err:
        logger.error("nothing was run or written: %s", err)
        return Failed(message=str(err))
    summary = summary_table()
    create_markdown_artifact(markdown=f"# SFT vs PPO\n\n{summary}\n", key="rlhf-evaluation")
    logger.info("evaluation summary:\n%s", summary)
    tracking = run_params.tracking
    if tracking.approval and tracking.log_models:  # outside the lock: a person may take a while
        configure_tracking(tracking.experiment, tracking.fallback_to_local)
        version = registry.pending_approval(tracking.policy_model_name)
        if version is not None:
            answer = await_approval(tracking.policy_model_name, version, summary, tracking.approval_timeout_s)
            outcome["approval"] = {True: "approved", False: "rejected", None: "no answer"}[answer]
    return outcome


if __name__ == "__main__":
    rlhf_pipeline()
