"""Team scale in a smoke project, with real `rlhf stage`, `dvc repro`, Prefect flow runs and a DVC remote:

- two pipeline runs in one project folder: the second fails at once, naming the lock, and the first's outputs
  stay whole;
- `dvc push` to a remote, then a fresh clone and `dvc pull` reproduce the workspace, and `dvc repro` is a no-op.
"""

from __future__ import annotations

import filecmp
import json
import subprocess
import sys
import time

import pytest

from tasks.cli import STAGES
from tests.pipeline.smoke_project import background, copy_project, project_env, run, stages_run

pytestmark = pytest.mark.integration
HOLD = (
    "import time\nfrom tasks.lock import pipeline_lock\n"
    "with pipeline_lock('a test holding the lock'):\n    print('held', flush=True)\n    time.sleep(600)\n"
)


def _hold_lock(project, env):
    """A process holding the project's lock until killed (SIGKILL: a killed holder must not leave it held)."""
    log = project / "holder.log"
    holder = background([sys.executable, "-c", HOLD], project, env, log)
    process = holder.__enter__()
    deadline = time.monotonic() + 30
    while "held" not in log.read_text():
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return holder


def test_a_stage_or_flow_run_refuses_while_another_run_holds_the_lock(tmp_path):
    project = copy_project(tmp_path)
    env = project_env(project)
    params_before = (project / "params.yaml").read_bytes()
    holder = _hold_lock(project, env)
    try:
        started = time.monotonic()
        stage = run(["rlhf", "stage", "params"], project, env)
        assert stage.returncode == 4 and time.monotonic() - started < 30
        assert ".rlhf-pipeline.lock" in stage.stderr and "a test holding the lock" in stage.stderr
        assert not (project / "reports/params_check.json").exists()

        flow = run(
            [
                sys.executable,
                "-c",
                "from flows.pipeline import rlhf_pipeline; rlhf_pipeline(profile='profiles/smoke.yaml')",
            ],
            project,
            env,
        )
        assert flow.returncode != 0
        assert "another pipeline run holds" in flow.stdout + flow.stderr
        assert not stages_run(flow.stdout) and not (project / "data/prepared").exists()
        assert (project / "params.yaml").read_bytes() == params_before  # the profile never went in
    finally:
        holder.__exit__(None, None, None)  # SIGTERM, then SIGKILL
    assert run(["rlhf", "stage", "params"], project, env).returncode == 0  # released with its holder


@pytest.fixture(scope="module")
def raced(tmp_path_factory):
    """A smoke project where two `dvc repro` started together: (project, env, first's output, second's result,
    seconds the second took)."""
    project = copy_project(tmp_path_factory.mktemp("raced"))
    env = project_env(project)
    first = subprocess.Popen(["dvc", "repro"], cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    time.sleep(3)  # the first is inside its stages
    started = time.monotonic()
    second = run(["dvc", "repro"], project, env)
    second_seconds = time.monotonic() - started
    first_output = first.communicate(timeout=900)[0].decode()
    assert first.returncode == 0, first_output
    return project, env, first_output, second, second_seconds


def test_two_dvc_repro_at_once_one_runs_the_other_fails_fast_and_outputs_stay_whole(raced):
    project, env, first_output, second, second_seconds = raced
    assert second.returncode != 0 and second_seconds < 60
    message = second.stdout + second.stderr
    assert "lock" in message.lower()  # DVC's repo lock, or ours naming .rlhf-pipeline.lock
    assert stages_run(first_output) == set(STAGES)
    status = run(["dvc", "status", "--json"], project, env)
    assert json.loads(status.stdout or "{}") == {}  # every stage's outputs match dvc.lock
    assert json.loads((project / "metrics/evaluate.json").read_text())["eval/ppo_judge_score"] >= 0


def test_dvc_remote_round_trip_reproduces_the_workspace_in_a_fresh_clone(raced, tmp_path):
    project, env, _, _, _ = raced
    remote = tmp_path / "remote"
    git = ["git", "-c", "user.email=test@example.com", "-c", "user.name=test"]
    assert run(["dvc", "remote", "add", "--default", "team", str(remote)], project, env).returncode == 0
    assert run([*git, "add", "-A"], project, env).returncode == 0
    assert run([*git, "commit", "-qm", "pipeline run and its remote"], project, env).returncode == 0
    pushed = run(["dvc", "push"], project, env)
    assert pushed.returncode == 0 and remote.is_dir()

    clone = tmp_path / "clone"
    assert run(["git", "clone", "-q", str(project), str(clone)], tmp_path, env).returncode == 0
    clone_env = project_env(clone)
    assert not (clone / "models/ppo").exists()  # models are in DVC's remote, not in git
    # The clone must not reach the original's cache by accident; the original gets it back for the module's other test.
    cache, hidden = project / ".dvc" / "cache", project / ".dvc" / "cache.hidden"
    cache.rename(hidden)
    try:
        assert run(["dvc", "pull"], clone, clone_env).returncode == 0
    finally:
        hidden.rename(cache)
    for folder in ("data/prepared", "models/sft", "models/ppo", "models/reward"):
        compared = filecmp.dircmp(project / folder, clone / folder)
        assert not (compared.left_only or compared.right_only or compared.diff_files), folder
    repro = run(["dvc", "repro"], clone, clone_env)
    assert repro.returncode == 0 and not stages_run(repro.stdout)
    assert "up to date" in repro.stdout.lower()
