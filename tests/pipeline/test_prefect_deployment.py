"""The pipeline as a Prefect deployment: a real server and process worker on 127.0.0.1, smoke profile."""

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


def test_invalid_data_fails_in_validate_before_any_training(deployment):
    project, env = deployment
    # Untruncated IMDb reviews run to thousands of characters, past validate.max_chars.
    overrides = json.dumps({"overrides": {"prepare.max_chars": 20000}})
    result = deployment_run(env, project, "--params", overrides)
    assert result.returncode != 0
    assert "Failed" in result.stdout
    report = json.loads((project / "reports/validation.json").read_text())
    assert report["success"] is False
    assert not (project / "models").exists()  # no training stage ran
    worker_log = (project / "worker.log").read_text()
    assert "stage-validate" in worker_log and "exit code 2" in worker_log
    assert "stage-sft" not in worker_log


def test_deployment_run_completes_and_dvc_agrees(deployment):
    project, env = deployment
    result = deployment_run(env, project, "--param", "profile=profiles/smoke.yaml")
    assert result.returncode == 0, result.stdout
    assert "Completed" in result.stdout
    evaluation = json.loads((project / "metrics/evaluate.json").read_text())
    assert "eval/ppo_judge_score" in evaluation
    artifact = run(["prefect", "artifact", "inspect", "rlhf-evaluation"], project, env)
    assert artifact.returncode == 0 and "held-out judge" in artifact.stdout
    status = run(["dvc", "status"], project, env)  # the flow recorded every stage in dvc.lock
    assert status.returncode == 0 and "Data and pipelines are up to date" in status.stdout
