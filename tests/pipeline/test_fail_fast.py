"""Failing fast and retrying: impossible params and an unreachable MLflow server stop a stage before
training (or, when asked, it logs locally); the flow retries transient stage failures but not bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest
import yaml

from tests.pipeline.smoke_project import (
    background,
    copy_project,
    free_port,
    project_env,
    run,
    wait_healthy,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prepared_once(tmp_path_factory):
    project = copy_project(tmp_path_factory.mktemp("services_project"))
    env = project_env(project)
    for stage in ("prepare", "validate"):
        assert run(["rlhf", "stage", stage, "--no-tracking"], project, env).returncode == 0
    return project


@pytest.fixture
def prepared(prepared_once, tmp_path):
    """A fresh copy of the prepared project per test, so one test's training never shows in another's."""
    project = shutil.copytree(prepared_once, tmp_path / "project", symlinks=True)
    return project, project_env(project)


def test_unreachable_tracking_server_fails_fast_before_training(prepared):
    project, env = prepared
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = run(["rlhf", "stage", "sft"], project, env | {"MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 3  # EXIT_SERVICE_DOWN: the flow may retry it
    assert uri in result.stderr and "unreachable" in result.stderr
    assert time.monotonic() - started < 60  # the probe, not MLflow's minutes of retries
    assert not (project / "checkpoints/sft").exists() and not (project / "models/sft").exists()


def test_sequence_longer_than_the_context_fails_naming_the_key(prepared):
    project, env = prepared
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["sft"]["max_length"] = 1000  # the tiny model has 256 positions
    bad = project / "too_long.yaml"
    bad.write_text(yaml.safe_dump(params))
    result = run(["rlhf", "stage", "sft", "--no-tracking", "--params", str(bad)], project, env)
    assert result.returncode == 2  # EXIT_BAD_INPUT: the flow does not retry it
    assert "sft.max_length: 1000 tokens exceed" in result.stderr and "256" in result.stderr
    assert not (project / "checkpoints/sft").exists()


def test_fallback_option_trains_and_logs_locally(prepared):
    project, env = prepared
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["tracking"]["fallback_to_local"] = True
    fallback = project / "fallback.yaml"
    fallback.write_text(yaml.safe_dump(params))
    uri = f"http://127.0.0.1:{free_port()}"
    result = run(["rlhf", "stage", "sft", "--params", str(fallback)], project, env | {"MLFLOW_TRACKING_URI": uri})
    assert result.returncode == 0, result.stderr
    assert (project / "models/sft/config.json").is_file()
    assert (project / "mlflow.db").is_file()


def test_reachable_tracking_server_records_the_stage(prepared):
    import mlflow

    project, env = prepared
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    command = ["mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--backend-store-uri", f"sqlite:///{project}/server.db", "--workers", "1"]
    with background(command, project, env, project / "mlflow-server.log") as server:
        wait_healthy(f"{uri}/health", server, project / "mlflow-server.log", timeout=120)
        result = run(["rlhf", "stage", "validate"], project, env | {"MLFLOW_TRACKING_URI": uri})
        assert result.returncode == 0, result.stderr
        client = mlflow.MlflowClient(uri)
        experiment = client.get_experiment_by_name("rlhf-smoke")
        stages = [r.data.tags.get("rlhf.stage") for r in client.search_runs([experiment.experiment_id])]
        assert "validate" in stages


def _retry_project(tmp_path, fail_code: int):
    """A git+DVC repo with one stage that fails with `fail_code` on its first attempt only."""
    env = project_env(tmp_path)
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(command, cwd=tmp_path, env=env, check=True)
    script = (
        "import pathlib, sys; p = pathlib.Path('attempts'); n = int(p.read_text()) if p.exists() else 0; "
        f"p.write_text(str(n + 1)); pathlib.Path('out.txt').write_text('done'); sys.exit({fail_code} if n == 0 else 0)"
    )
    stage = {"cmd": f'python -c "{script}"', "outs": [{"out.txt": {"cache": False}}]}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"flaky": stage}}))
    return env


@pytest.mark.parametrize(("fail_code", "attempts"), [(1, 2), (3, 2), (2, 1)], ids=["crash", "service", "bad-input"])
def test_flow_task_retries_transient_failures_only(tmp_path, monkeypatch, fail_code, attempts):
    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import StageFailed, run_stage

    env = _retry_project(tmp_path, fail_code)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)

    @flow
    def one_stage():
        return run_stage.with_options(retry_delay_seconds=0)("flaky")

    with prefect_test_harness():
        if attempts == 1:
            with pytest.raises(StageFailed, match="exit code 2"):
                one_stage()
        else:
            assert one_stage() == "ran"
    assert (tmp_path / "attempts").read_text() == str(attempts)


def test_reward_and_judge_stages_skip_when_nothing_needs_training(prepared):
    project, env = prepared
    params = yaml.safe_load((project / "params.yaml").read_text())
    vader = {"kind": "function", "function": "recipes.sentiment.judges:vader"}
    params["reward_sources"] = [{"name": "positivity", **vader}]
    params["judges"] = [{"name": "vader", **vader}]
    params["tracking"]["promotion_judge"] = None  # the first judge
    path = project / "no_training.yaml"
    path.write_text(yaml.safe_dump(params))
    for stage in ("reward", "judge"):
        result = run(["rlhf", "stage", stage, "--no-tracking", "--params", str(path)], project, env)
        assert result.returncode == 0, result.stderr
        assert f"{stage}: skipped" in result.stdout
        assert json.loads((project / f"metrics/{stage}.json").read_text())[f"{stage}/skipped"] == 1.0
        assert (project / f"models/{stage}/skipped.json").is_file()
    assert not (project / "checkpoints").exists()
