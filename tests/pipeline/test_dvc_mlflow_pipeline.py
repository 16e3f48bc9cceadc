"""The smoke pipeline under real `dvc repro` in a temporary git repo, recorded in a real MLflow store."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.pipeline.smoke_project import copy_project, project_env, run, stages_run

pytestmark = pytest.mark.integration
ALL_STAGES = {"prepare", "validate", "sft", "reward", "judge", "ppo", "evaluate"}


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    project = copy_project(tmp_path_factory.mktemp("dvc_project"))
    env = project_env(project)
    first = run(["dvc", "repro"], project, env)
    assert first.returncode == 0, first.stderr
    return project, env, first.stdout


@pytest.fixture(scope="module")
def mlflow_client(reproduced):
    import mlflow

    project = reproduced[0]
    uri = f"sqlite:///{project}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield mlflow.MlflowClient(uri)
    mlflow.set_tracking_uri(None)


def test_repro_runs_every_stage_then_is_a_noop(reproduced):
    project, env, first_output = reproduced
    assert stages_run(first_output) == ALL_STAGES
    evaluation = json.loads((project / "metrics/evaluate.json").read_text())
    for key in ("eval/sft_judge_score", "eval/ppo_judge_score", "eval/kl_ppo_to_sft", "eval/judge_win_rate_ppo"):
        assert key in evaluation
    assert (project / "dvc.lock").is_file()
    second = run(["dvc", "repro"], project, env)
    assert second.returncode == 0
    assert stages_run(second.stdout) == set()
    assert "Data and pipelines are up to date" in second.stdout


def test_mlflow_has_nested_stage_runs_with_metrics(reproduced, mlflow_client):
    experiment = mlflow_client.get_experiment_by_name("rlhf-smoke")
    runs = mlflow_client.search_runs([experiment.experiment_id])
    stage_runs = {run.data.tags["rlhf.stage"]: run for run in runs if "rlhf.stage" in run.data.tags}
    assert set(stage_runs) == ALL_STAGES
    parents = {run.data.tags["mlflow.parentRunId"] for run in stage_runs.values()}
    assert len(parents) == 1  # one pipeline run, each stage nested under it
    parent = mlflow_client.get_run(parents.pop())
    assert parent.data.tags["rlhf.pipeline_run"] == stage_runs["ppo"].data.tags["rlhf.pipeline_run"]
    assert "eval/ppo_judge_score" in stage_runs["evaluate"].data.metrics
    assert any(key.startswith("dvc.data/prepared") for key in stage_runs["sft"].data.tags)
    assert stage_runs["ppo"].data.params["ppo.kl_coef"] == "0.05"
    ppo_history = mlflow_client.get_metric_history(stage_runs["ppo"].info.run_id, "ppo/objective/kl")
    assert len(ppo_history) == 4  # one point per PPO step of the smoke profile
    artifacts = {a.path for a in mlflow_client.list_artifacts(stage_runs["ppo"].info.run_id)}
    assert "ppo_curves.png" in artifacts
    evaluate_artifacts = {a.path for a in mlflow_client.list_artifacts(stage_runs["evaluate"].info.run_id)}
    assert "samples.json" in evaluate_artifacts


def test_registered_policy_is_candidate_and_loads_back_to_generate(reproduced, mlflow_client):
    import mlflow

    candidate = mlflow_client.get_model_version_by_alias("rlhf-policy", "candidate")
    # The first candidate meets no champion, and the smoke profile's KL budget is generous.
    champion = mlflow_client.get_model_version_by_alias("rlhf-policy", "champion")
    assert champion.version == candidate.version
    assert "no champion yet" in candidate.tags["promotion"]
    assert len(mlflow_client.search_model_versions("name='rlhf-reward-model'")) == 1
    generator = mlflow.transformers.load_model("models:/rlhf-policy@candidate")
    text = generator("the movie was", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("the movie was") and len(text) > len("the movie was")


def test_ppo_param_change_reruns_only_ppo_and_evaluate(reproduced):
    project, env, _ = reproduced
    experiment = run(["dvc", "exp", "run", "-S", "ppo.kl_coef=0.1"], project, env)
    assert experiment.returncode == 0, experiment.stderr
    assert stages_run(experiment.stdout) == {"ppo", "evaluate"}
    shown = run(["dvc", "exp", "show", "--json"], project, env)
    assert shown.returncode == 0
    kl_coefs = [
        experiment["data"]["params"]["params.yaml"]["data"]["ppo"]["kl_coef"]
        for commit in json.loads(shown.stdout)
        for experiment in [commit, *[e for row in commit.get("experiments") or [] for e in row["revs"]]]
        if experiment.get("data")
    ]
    assert 0.05 in kl_coefs and 0.1 in kl_coefs  # the baseline and the experiment, side by side


def test_a_failing_repro_keeps_what_earlier_runs_produced(reproduced):
    project, env, _ = reproduced
    kept = [project / "models/sft/model.safetensors", project / "models/ppo/model.safetensors"]
    kept += sorted((project / "data/prepared").glob("*.jsonl"))
    before = {path: path.stat().st_mtime_ns for path in kept}
    params_file = project / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["validate"]["max_chars"] = 5  # every prepared text now breaks the length expectation
    params_file.write_text(yaml.safe_dump(params))
    try:
        failed = run(["dvc", "repro"], project, env)
    finally:
        params_file.write_text(original)
    assert failed.returncode != 0
    assert stages_run(failed.stdout) == {"validate"}
    assert {path: path.stat().st_mtime_ns for path in kept} == before
