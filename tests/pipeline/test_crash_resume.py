"""Kill -9 during sft, reward and ppo, then rerun the stage: it resumes from its last checkpoint.

Real subprocesses (`rlhf stage <name>`), killed with SIGKILL at a random moment after their first
complete checkpoint, in a smoke project whose training runs long enough to be interrupted.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from rlhf_lib.config import ModelConfig
from rlhf_lib.models.loading import load_causal_lm, load_sequence_scorer
from tests.pipeline.smoke_project import copy_project, project_env, run

pytestmark = pytest.mark.integration
LONG_RUNS = {
    "sft": {"max_steps": 40, "save_steps": 4},
    "reward": {"max_steps": 40, "save_steps": 4},
    "ppo": {"total_steps": 24, "save_steps": 3},
}
STEP_KEY = {"sft": "max_steps", "reward": "max_steps", "ppo": "total_steps"}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    project = copy_project(tmp_path_factory.mktemp("crash_project"))
    params = yaml.safe_load((project / "params.yaml").read_text())
    for stage, settings in LONG_RUNS.items():
        params[stage].update(settings)
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    env = project_env(project)
    for stage in ("prepare", "validate"):
        assert run(["rlhf", "stage", stage, "--no-tracking"], project, env).returncode == 0
    return project, env


def complete_checkpoints(project: Path, stage: str) -> list[int]:
    """Steps of the checkpoints a resume may trust (HF ones carry the completion marker)."""
    steps = []
    for folder in project.glob(f"checkpoints/{stage}/*/checkpoints/checkpoint-*"):
        if stage == "ppo" or (folder / ".complete").is_file():
            steps.append(int(folder.name.split("-")[1]))
    return sorted(steps)


def kill_after_first_checkpoint(project: Path, env: dict[str, str], stage: str, delay: float) -> None:
    log = (project / f"{stage}-killed.log").open("w")
    process = subprocess.Popen(["rlhf", "stage", stage, "--no-tracking"], cwd=project, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 300
        while not complete_checkpoints(project, stage):
            assert process.poll() is None, f"{stage} ended before its first checkpoint"
            assert time.monotonic() < deadline, f"{stage} wrote no checkpoint in 300 s"
            time.sleep(0.05)
        time.sleep(delay)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, f"{stage} finished before the kill; lengthen its run"


@pytest.mark.parametrize("stage", ["sft", "reward", "ppo"])
def test_killed_stage_resumes_from_its_last_checkpoint(project, stage):
    project, env = project
    for needed in {"ppo": ["sft", "reward", "judge"]}.get(stage, []):  # ppo uses their models (the judge: held out)
        if not (project / "models" / needed).is_dir():
            assert run(["rlhf", "stage", needed, "--no-tracking"], project, env).returncode == 0
    kill_after_first_checkpoint(project, env, stage, delay=random.Random(stage).uniform(0.0, 1.5))
    at_kill = complete_checkpoints(project, stage)
    assert at_kill, "the kill left no usable checkpoint"

    rerun = run(["rlhf", "stage", stage, "--no-tracking"], project, env)
    assert rerun.returncode == 0, rerun.stderr
    metrics = json.loads((project / f"metrics/{stage}.json").read_text())
    total = LONG_RUNS[stage][STEP_KEY[stage]]
    # Resumed from the newest checkpoint the killed run completed, not from step 0.
    assert metrics[f"{stage}/resumed_from_step"] == at_kill[-1] >= LONG_RUNS[stage]["save_steps"]
    assert complete_checkpoints(project, stage)[-1] == total
    model_dir = str(project / "models" / stage)
    model = (load_sequence_scorer if stage == "reward" else load_causal_lm)(ModelConfig(name_or_path=model_dir))
    assert all(p.isfinite().all() for p in model.parameters())
    if stage == "ppo":  # the curve has every step once: the killed run's rows up to its checkpoint, then the rest
        steps = [int(line.split(",")[0]) for line in (project / "metrics/ppo_history.csv").read_text().split()[1:]]
        assert steps == list(range(1, total + 1))
