"""The pipeline against a team's MLflow: a real `mlflow server` on a real PostgreSQL, with served artifacts.

Two smoke projects share the server; one rides out a server restart in the middle of PPO, and an outage that
outlasts a stage fails it naming the server, after its checkpoint and model are saved.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tasks.cli import STAGES
from tests.pipeline.smoke_project import copy_project, project_env, run
from tests.pipeline.team_services import MlflowServer, postgres

pytestmark = pytest.mark.integration
OUTAGE_S = 20.0


@pytest.fixture(scope="module")
def team(tmp_path_factory):
    """(PostgreSQL URI, MLflow server, project A reproduced against it)."""
    folder = tmp_path_factory.mktemp("team")
    with postgres() as database:
        project = copy_project(folder / "a")
        server = MlflowServer(database, folder, project_env(project))
        server.start()
        try:
            env = project_env(project, MLFLOW_TRACKING_URI=server.uri)
            result = run(["dvc", "repro"], project, env, timeout=900)
            assert result.returncode == 0, result.stderr
            yield database, server, project
        finally:
            server.stop()


def _query(database: str, sql: str, *args) -> list[tuple]:
    import psycopg2

    connection = psycopg2.connect(database.replace("postgresql+psycopg2", "postgresql"))
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, args)
            return cursor.fetchall()
    finally:
        connection.close()


def _client(server: MlflowServer):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=server.uri, registry_uri=server.uri)


def _aliases(database: str, model: str) -> dict[str, int]:
    rows = _query(database, "SELECT alias, version FROM registered_model_aliases WHERE name = %s", model)
    return dict(rows)


def test_runs_metrics_artifacts_and_registered_models_live_in_postgres_and_load_back(team, tmp_path):
    import mlflow

    database, server, _ = team
    stages = {row[0] for row in _query(database, "SELECT value FROM tags WHERE key = 'rlhf.stage'")}
    assert stages == set(STAGES) - {"params"}  # `params` logs nothing
    keys = {row[0] for row in _query(database, "SELECT DISTINCT key FROM metrics")}
    assert {"ppo/objective/kl", "sft/eval_loss", "eval/ppo_judge_score"} <= keys
    first_ppo = _query(  # the pipeline's own; the outage test of this module may have run longer PPO stages since
        database,
        "SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
        "WHERE t.key = 'rlhf.stage' AND t.value = 'ppo' ORDER BY r.start_time LIMIT 1",
    )[0][0]
    ppo_steps = _query(
        database,
        "SELECT DISTINCT step FROM metrics WHERE key = 'ppo/objective/kl' AND run_uuid = %s ORDER BY step",
        first_ppo,
    )
    assert [step for (step,) in ppo_steps] == [1, 2, 3, 4]
    assert _aliases(database, "rlhf-smoke-policy")["candidate"] == 1
    assert {name for (name,) in _query(database, "SELECT name FROM registered_models")} >= {
        "rlhf-smoke-policy",
        "rlhf-smoke-reward-model",
    }

    client = _client(server)
    experiment = client.get_experiment_by_name("rlhf-smoke").experiment_id
    runs = client.search_runs([experiment], order_by=["attributes.start_time DESC"])
    by_stage = {run.data.tags.get("rlhf.stage"): run for run in runs}  # the oldest of each stage: the pipeline's
    assert "ppo_curves.png" in {a.path for a in client.list_artifacts(by_stage["ppo"].info.run_id)}
    assert by_stage["ppo"].info.artifact_uri.startswith("mlflow-artifacts:")  # served by the server, not a path
    table = json.loads(
        Path(client.download_artifacts(by_stage["evaluate"].info.run_id, "samples.json", str(tmp_path))).read_text()
    )  # the sample table, through the server's artifact proxy
    assert {"prompt", "sft_response", "ppo_response"} <= set(table["columns"]) and len(table["data"]) == 8
    mlflow.set_tracking_uri(server.uri)
    mlflow.set_registry_uri(server.uri)
    policy = mlflow.transformers.load_model("models:/rlhf-smoke-policy@candidate", return_type="components")
    encoded = policy["tokenizer"]("the movie was", return_tensors="pt")
    assert (
        policy["model"].generate(**encoded, max_new_tokens=3, do_sample=False).shape[1] > encoded["input_ids"].shape[1]
    )


def test_two_projects_on_one_server_register_their_own_versions(team, tmp_path):
    database, server, _ = team
    before = _aliases(database, "rlhf-smoke-policy")
    project = copy_project(tmp_path / "b")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["tracking"] |= {"experiment": "team-b", "policy_model_name": "team-b-policy"}
    params["tracking"] |= {"reward_model_name": "team-b-reward-model"}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = project_env(project, MLFLOW_TRACKING_URI=server.uri)
    assert run(["dvc", "repro"], project, env, timeout=900).returncode == 0
    assert _aliases(database, "team-b-policy")["candidate"] == 1
    assert _aliases(database, "rlhf-smoke-policy") == before  # project A's aliases untouched

    # Project B pointed at A's registered name is refused before it trains, and A's aliases stay as they were.
    params["tracking"]["policy_model_name"] = "rlhf-smoke-policy"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    refused = run(["rlhf", "stage", "sft"], project, env)
    assert refused.returncode != 0 and "rlhf-smoke-policy" in refused.stderr
    assert _aliases(database, "rlhf-smoke-policy") == before


def _ppo_in_background(project, env, total_steps: int, **tracking) -> subprocess.Popen:
    """`rlhf stage ppo` with `total_steps` steps (a fresh run: new settings, new checkpoints), started now."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["ppo"] |= {"total_steps": total_steps, "save_steps": total_steps, "eval_steps": total_steps}
    params["tracking"] |= tracking
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (project / "metrics/ppo_history.csv").unlink(missing_ok=True)  # so `_wait_for_steps` sees this run's steps
    return subprocess.Popen(
        ["rlhf", "stage", "ppo"], cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_for_steps(project, steps: int, process: subprocess.Popen, timeout: float = 300) -> None:
    history = project / "metrics/ppo_history.csv"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if history.is_file() and len(history.read_text().splitlines()) > steps:
            return
        time.sleep(0.2)
    raise AssertionError(f"PPO did not reach step {steps}: {process.stdout.read() if process.poll() else ''}")


def test_a_server_restart_mid_stage_loses_no_point_and_a_long_outage_fails_naming_the_server(team):
    database, server, project = team
    env = project_env(project, MLFLOW_TRACKING_URI=server.uri)
    total = 60
    stage = _ppo_in_background(project, env, total)
    _wait_for_steps(project, 5, stage)
    server.stop()
    stopped = time.monotonic()
    time.sleep(OUTAGE_S)
    server.start()
    outage = time.monotonic() - stopped
    output = stage.communicate(timeout=900)[0]
    assert stage.returncode == 0, output
    assert "unreachable" in output  # the sink said so, and kept the points
    runs = _query(
        database,
        "SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
        "WHERE t.key = 'rlhf.stage' AND t.value = 'ppo' ORDER BY r.start_time DESC LIMIT 1",
    )
    steps = _query(
        database, "SELECT DISTINCT step FROM metrics WHERE run_uuid = %s AND key = 'ppo/objective/kl'", runs[0][0]
    )
    assert sorted(step for (step,) in steps) == list(range(1, total + 1)), f"outage {outage:.0f} s lost points"
    print(f"survived an MLflow server outage of {outage:.1f} s mid-PPO with every point logged")

    # Down for good: training finishes and saves, then the stage fails naming the server.
    long_run = _ppo_in_background(project, env | {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}, total + 4, outage_wait_s=5.0)
    _wait_for_steps(project, 3, long_run)
    server.stop()
    output = long_run.communicate(timeout=900)[0]
    server.start()  # for the other tests of the module
    assert long_run.returncode == 3, output
    assert f"MLflow server {server.uri} unreachable" in output
    final = list((project / "checkpoints").glob(f"ppo/*/checkpoints/checkpoint-{total + 4}"))
    assert final, "the last checkpoint is saved before the stage fails"
    assert json.loads((project / "models/ppo/value_head_config.json").read_text())  # the policy is saved too
