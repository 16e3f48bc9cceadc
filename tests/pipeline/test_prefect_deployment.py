"""The pipeline as a Prefect deployment: a real server and process worker on 127.0.0.1, smoke profile.

The tests share one deployment and pass in any order: each run leaves params.yaml as it found it."""

from __future__ import annotations

import json

import pytest

from tests.pipeline.smoke_project import background, copy_project, free_port, project_env, run, wait_healthy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """Server, work pool, deployment and worker for a fresh smoke project; all stopped afterwards."""
    project = copy_project(tmp_path_factory.mktemp("prefect_project"))
    port = free_port()
    env = project_env(
        project,
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_RUNNER_POLL_FREQUENCY="1",
        # The server streams logs out, so `--watch` shows the flow's own log lines (off by default).
        PREFECT_SERVER_LOGS_STREAM_OUT_ENABLED="true",
        PREFECT_SERVER_LOGS_STREAM_PUBLISHING_ENABLED="true",
    )
    server_command = ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with background(server_command, project, env, project / "server.log") as server:
        wait_healthy(f"http://127.0.0.1:{port}/api/health", server, project / "server.log")
        assert run(["prefect", "work-pool", "create", "rlhf-pool", "--type", "process"], project, env).returncode == 0
        assert run(["prefect", "--no-prompt", "deploy", "--name", "default"], project, env).returncode == 0
        worker_command = ["prefect", "worker", "start", "--pool", "rlhf-pool"]
        with background(worker_command, project, env, project / "worker.log"):
            yield project, env


def deployment_run(env, project, *params: str):
    command = ["prefect", "deployment", "run", "rlhf-pipeline/default", *params, "--watch"]
    return run(command, project, env, timeout=900)


def _files(project) -> dict[str, int]:
    """Every project file but the servers' own and Python's bytecode, with its modification time."""
    skip = (".prefect", ".dvc/tmp", "server.log", "worker.log", "mlflow.db")
    paths = [
        p
        for p in project.rglob("*")
        if p.is_file() and not str(p.relative_to(project)).startswith(skip) and "__pycache__" not in p.parts
    ]
    return {str(p.relative_to(project)): p.stat().st_mtime_ns for p in paths}


def _experiments(project, env) -> dict[str, dict]:
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project, env).stdout)
    return {rev["name"]: rev["data"] for commit in shown for e in commit.get("experiments") or [] for rev in e["revs"]}


def test_an_invalid_override_fails_before_anything_is_written_and_says_why(deployment):
    project, env = deployment
    before = _files(project)
    result = deployment_run(env, project, "--params", json.dumps({"overrides": {"ppo.kl_coef": -1}}))
    assert result.returncode != 0
    # The reason, under --watch, not only in the worker's log
    assert "invalid params" in result.stdout
    assert "ppo.kl_coef: Input should be greater than or equal to 0" in result.stdout
    assert _files(project) == before


def test_invalid_data_fails_in_validate_before_any_training(deployment):
    project, env = deployment
    params_before = (project / "params.yaml").read_bytes()
    # Untruncated IMDb reviews run to thousands of characters, past validate.max_chars.
    overrides = json.dumps({"overrides": {"prepare.max_chars": 20000}})
    result = deployment_run(env, project, "--params", overrides)
    assert result.returncode != 0
    assert "Failed" in result.stdout
    report = json.loads((project / "reports/validation.failed.json").read_text())
    assert report["success"] is False
    assert "stage-validate" in result.stdout and "exit code 2" in result.stdout
    assert "stage-sft" not in result.stdout  # no training stage ran
    assert (project / "params.yaml").read_bytes() == params_before


def test_deployment_run_completes_is_saved_as_an_experiment_and_dvc_agrees(deployment):
    project, env = deployment
    result = deployment_run(env, project, "--param", "experiment=plain-run")
    assert result.returncode == 0, result.stdout
    assert "Completed" in result.stdout
    assert "Running stage 'evaluate'" in result.stdout or "is up to date (dvc status)" in result.stdout  # stage output
    evaluation = json.loads((project / "metrics/evaluate.json").read_text())
    assert "eval/ppo_judge_score" in evaluation
    artifact = run(["prefect", "artifact", "inspect", "rlhf-evaluation"], project, env)
    assert artifact.returncode == 0 and "judge `sentiment`" in artifact.stdout and "judge `vader`" in artifact.stdout
    status = run(["dvc", "status"], project, env)  # the flow recorded every stage in dvc.lock
    assert status.returncode == 0 and "Data and pipelines are up to date" in status.stdout
    saved = _experiments(project, env)["plain-run"]
    assert saved["metrics"]["metrics/evaluate.json"]["data"] == evaluation


def test_profile_and_overrides_apply_to_their_run_only(deployment):
    project, env = deployment
    params_before = (project / "params.yaml").read_bytes()
    settings = {"profile": "profiles/smoke.yaml", "overrides": {"ppo.kl_coef": 0.2}, "experiment": "kl-0.2"}
    result = deployment_run(env, project, "--params", json.dumps(settings))
    assert result.returncode == 0, result.stdout
    assert (project / "params.yaml").read_bytes() == params_before
    saved = _experiments(project, env)["kl-0.2"]
    assert saved["params"]["params.yaml"]["data"]["ppo"]["kl_coef"] == 0.2
    assert "eval/kl_ppo_to_sft" in saved["metrics"]["metrics/evaluate.json"]["data"]
    assert "ppo/objective/kl" in result.stdout or "PPO" in result.stdout  # the stages' own output is in the logs
