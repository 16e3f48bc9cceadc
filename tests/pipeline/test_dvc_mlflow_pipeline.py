"""The smoke pipeline under real `dvc repro` in a temporary git repo, recorded in a real MLflow store; runs
compared with `dvc exp show`, `metrics diff` and `plots diff`; failures that keep every earlier output.

The tests share one reproduced project, and each leaves it as it found it (any order passes)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from tasks.cli import STAGES
from tests.pipeline.smoke_project import copy_project, project_env, run, stages_run

pytestmark = pytest.mark.integration
ALL_STAGES = set(STAGES)
TRACKED_STAGES = ALL_STAGES - {"params"}  # the params check opens no MLflow run
KEPT_IN_GIT = ("dvc.lock", "metrics", "reports")  # what a saved experiment holds besides tracked files


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    project = copy_project(tmp_path_factory.mktemp("dvc_project"))
    env = project_env(project)
    first = run(["dvc", "repro"], project, env)
    assert first.returncode == 0, first.stderr
    saved = run(["dvc", "exp", "save", "-n", "baseline", *[a for p in KEPT_IN_GIT for a in ("-I", p)]], project, env)
    assert saved.returncode == 0, saved.stderr
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
    mlflow.set_registry_uri(None)


@contextmanager
def back_to_baseline(project, env):
    """Whatever a test runs inside, the workspace is the baseline run again afterwards."""
    try:
        yield
    finally:
        assert run(["dvc", "exp", "apply", "baseline"], project, env).returncode == 0


def _experiments(shown: list[dict]) -> dict[str, dict]:
    """`dvc exp show --json` as {experiment name (or workspace/branch): its data}."""
    rows = {}
    for commit in shown:
        rows[commit.get("name") or commit["rev"]] = commit.get("data") or {}
        for experiment in commit.get("experiments") or []:
            for rev in experiment["revs"]:
                rows[rev.get("name") or rev["rev"]] = rev.get("data") or {}
    return rows


def _metric_files(project) -> dict[str, bytes]:
    # A failed validation's own report (reports/*.failed.json) is not an output: it comes and goes.
    files = [p for folder in ("metrics", "reports") for p in (project / folder).iterdir() if ".failed." not in p.name]
    return {str(p.relative_to(project)): p.read_bytes() for p in files}


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


def test_mlflow_parent_run_holds_params_headline_metrics_and_current_lineage(reproduced, mlflow_client, tmp_path):
    project = reproduced[0]
    experiment = mlflow_client.get_experiment_by_name("rlhf-smoke")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # opens on the runs table
    # The baseline's parent (other tests add pipeline runs with other params), found by its key.
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    key = "local-" + hashlib.sha256(commit.encode() + (project / "params.yaml").read_bytes()).hexdigest()[:16]
    query = f"tags.`rlhf.role` = 'pipeline' and tags.`rlhf.pipeline_run` = '{key}'"
    (parent,) = mlflow_client.search_runs([experiment.experiment_id], query)
    children = f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    stage_runs = {r.data.tags["rlhf.stage"]: r for r in mlflow_client.search_runs([experiment.experiment_id], children)}
    assert set(stage_runs) == TRACKED_STAGES  # one pipeline run, each stage nested under it
    evaluation = json.loads((project / "metrics/evaluate.json").read_text())
    reward = json.loads((project / "metrics/reward.json").read_text())
    # The parent compares pipelines on its own: resolved params, headline metrics, the registered policy.
    assert parent.data.params["ppo.kl_coef"] == "0.05" and parent.data.params["prepare.sft_examples"] == "64"
    assert parent.data.params["ppo.cliprange"] == "0.2"  # a default the smoke profile does not write: resolved
    assert parent.data.tags["rlhf.default_precision"] == "fp32"  # what `bf16: null` meant (tests/conftest.py)
    assert parent.data.metrics["eval/ppo_judge_score"] == pytest.approx(evaluation["eval/ppo_judge_score"])
    assert parent.data.metrics["eval/kl_ppo_to_sft"] == pytest.approx(evaluation["eval/kl_ppo_to_sft"])
    assert parent.data.metrics["reward/eval_accuracy"] == pytest.approx(reward["reward/eval_accuracy"])
    assert parent.data.tags["rlhf.policy"].startswith("models:/rlhf-smoke-policy/")
    # Lineage: the data hash dvc.lock recorded for this run; dvc.lock was never committed, so the tree is dirty.
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    data_md5 = next(o["md5"] for o in lock["stages"]["prepare"]["outs"] if o["path"] == "data/prepared")
    assert parent.data.tags["dvc.data/prepared"] == stage_runs["sft"].data.tags["dvc.data/prepared"] == data_md5
    assert "dvc.data/prepared" not in stage_runs["prepare"].data.tags  # dvc.lock held the old hash then
    assert parent.data.tags["rlhf.git_dirty"] == "true" and "dvc.lock" in parent.data.tags["rlhf.git_dirty_files"]
    ppo_history = mlflow_client.get_metric_history(stage_runs["ppo"].info.run_id, "ppo/objective/kl")
    assert len(ppo_history) == 4  # one point per PPO step of the smoke profile
    artifacts = {a.path for a in mlflow_client.list_artifacts(stage_runs["ppo"].info.run_id)}
    assert "ppo_curves.png" in artifacts
    samples = mlflow_client.download_artifacts(stage_runs["evaluate"].info.run_id, "samples.json", str(tmp_path))
    columns = json.loads(Path(samples).read_text())["columns"]
    assert columns[:3] == ["prompt", "sft_response", "ppo_response"]


def test_registered_policy_is_candidate_and_loads_back_to_generate(reproduced, mlflow_client):
    import mlflow

    first = mlflow_client.get_model_version("rlhf-smoke-policy", "1")
    project = reproduced[0]
    evaluation = json.loads((project / "metrics/evaluate.json").read_text())
    # The smoke profile's KL budget is generous and there is no champion yet: the judge's interval decides.
    if evaluation["eval/judge_diff_ci_low"] > 0:
        assert "no champion yet" in first.tags["promotion"]
        assert mlflow_client.get_model_version_by_alias("rlhf-smoke-policy", "champion").version == "1"
    else:  # version 1 stays a candidate (a later experiment's version may have become champion since)
        assert "not above zero" in first.tags["promotion"]
        versions = mlflow_client.search_model_versions("name='rlhf-smoke-policy'")
        assert all("champion" not in v.aliases for v in versions if v.version == "1")
    assert float(first.tags["eval/judge_diff_ci_low"]) == pytest.approx(evaluation["eval/judge_diff_ci_low"], abs=1e-6)
    assert mlflow_client.get_registered_model("rlhf-smoke-policy").tags["rlhf.experiment"] == "rlhf-smoke"
    reward_model = mlflow_client.get_model_version("rlhf-smoke-reward-model", "1")
    assert mlflow_client.get_run(reward_model.run_id).data.tags["rlhf.stage"] == "reward"
    generator = mlflow.transformers.load_model("models:/rlhf-smoke-policy@candidate")
    text = generator("the movie was", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("the movie was") and len(text) > len("the movie was")


def test_experiments_compare_in_exp_show_metrics_diff_and_plots_diff(reproduced, tmp_path):
    project, env, _ = reproduced
    baseline = _metric_files(project)
    with back_to_baseline(project, env):
        experiment = run(["dvc", "exp", "run", "-n", "kl-0.2", "-S", "ppo.kl_coef=0.2"], project, env)
        assert experiment.returncode == 0, experiment.stderr
        assert stages_run(experiment.stdout) == {"params", "ppo", "evaluate"}  # the check, then what kl_coef feeds
        shown = run(["dvc", "exp", "show", "--json"], project, env)
        rows = _experiments(json.loads(shown.stdout))
        for name, kl_coef in (("baseline", 0.05), ("kl-0.2", 0.2)):
            assert rows[name]["params"]["params.yaml"]["data"]["ppo"]["kl_coef"] == kl_coef
            assert "eval/ppo_judge_score" in rows[name]["metrics"]["metrics/evaluate.json"]["data"]
        diff = run(["dvc", "metrics", "diff", "baseline", "kl-0.2", "--json"], project, env)
        kl = json.loads(diff.stdout)["metrics/evaluate.json"]["eval/kl_ppo_to_sft"]
        assert isinstance(kl["old"], float) and isinstance(kl["new"], float)
        plots = run(["dvc", "plots", "diff", "baseline", "kl-0.2", "-o", str(tmp_path / "plots")], project, env)
        assert plots.returncode == 0, plots.stderr
        page = (tmp_path / "plots/index.html").read_text()
        assert "vegaEmbed" in page and not re.search(r"<script[^>]+src=[\"']https?:", page)  # draws offline
        for title in (
            "PPO step",
            "mean reward of the batch (the weighted sum of reward_sources)",
            "KL(policy || SFT reference)",
        ):
            assert title in page
        assert page.count('"rev": "baseline"') > 0 and page.count('"rev": "kl-0.2"') > 0
    # exp apply brought the baseline's metrics back, byte for byte
    assert _metric_files(project) == baseline


def test_lineage_follows_the_data_the_run_used(reproduced, mlflow_client):
    project, env, _ = reproduced
    with back_to_baseline(project, env):
        changed = run(["dvc", "exp", "run", "-n", "fewer-sft-rows", "-S", "prepare.sft_examples=48"], project, env)
        assert changed.returncode == 0, changed.stderr
        lock = yaml.safe_load((project / "dvc.lock").read_text())
        data_md5 = next(o["md5"] for o in lock["stages"]["prepare"]["outs"] if o["path"] == "data/prepared")
        experiment = mlflow_client.get_experiment_by_name("rlhf-smoke")
        query = "params.`prepare.sft_examples` = '48' and tags.`rlhf.role` = 'pipeline'"
        (parent,) = mlflow_client.search_runs([experiment.experiment_id], query)
        assert parent.data.tags["dvc.data/prepared"] == data_md5


def test_failed_stages_keep_every_earlier_output_and_metric(reproduced):
    project, env, _ = reproduced
    kept = [project / "models/sft/model.safetensors", project / "models/ppo/model.safetensors"]
    kept += sorted((project / "data/prepared").glob("*.jsonl"))
    before = {path: path.stat().st_mtime_ns for path in kept}
    figures = _metric_files(project)
    params_file = project / "params.yaml"
    original = params_file.read_text()
    for mistake, stages in (("validate", {"params", "validate"}), ("typo", {"params"})):
        params = yaml.safe_load(original)
        if mistake == "validate":
            params["validate"]["max_chars"] = 5  # every prepared text now breaks the length expectation
        else:
            params["evalute"] = {"num_prompts": 4}  # a key no stage reads: only the params check sees it
        params_file.write_text(yaml.safe_dump(params))
        try:
            failed = run(["dvc", "repro"], project, env)
        finally:
            params_file.write_text(original)
        assert failed.returncode != 0
        assert stages_run(failed.stdout) == stages
        if mistake == "typo":
            assert "evalute: unknown key" in failed.stdout + failed.stderr
        assert {path: path.stat().st_mtime_ns for path in kept} == before
        after = _metric_files(project)  # a failed validation adds its own report, and changes none
        assert {name: after.get(name) for name in figures} == figures
        fixed = run(["dvc", "repro"], project, env)  # at most the params check runs again (a second)
        assert fixed.returncode == 0 and stages_run(fixed.stdout) <= {"params"}, fixed.stdout
