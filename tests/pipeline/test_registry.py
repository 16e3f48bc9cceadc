"""The champion rule: PPO beats SFT beyond the judge's interval, beats the champion's judge score, with KL within
the budget; a registered name belongs to one experiment, so a smoke run can never become the real champion."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from rlhf_lib.config import ConfigError
from rlhf_lib.evaluation import distinct_n, win_rate
from tasks.params import TrackingConfig, load_params
from tasks.registry import EXPERIMENT_TAG, decide_promotion, require_own_names
from tests.pipeline.smoke_project import REPO_ROOT


def test_first_candidate_within_budget_becomes_champion():
    decision = decide_promotion(judge_score=0.6, kl=1.0, kl_budget=5.0, champion_judge_score=None, ci_low=0.01)
    assert decision.promoted and "no champion yet" in decision.reason


def test_candidate_must_beat_the_champion():
    assert decide_promotion(0.61, 1.0, 5.0, champion_judge_score=0.60, ci_low=0.01).promoted
    kept = decide_promotion(0.60, 1.0, 5.0, champion_judge_score=0.60, ci_low=0.01)
    assert not kept.promoted and "0.6000" in kept.reason


def test_kl_over_budget_is_never_promoted_however_good():
    decision = decide_promotion(0.99, kl=6.0, kl_budget=5.0, champion_judge_score=None, ci_low=0.5)
    assert not decision.promoted and "exceeds the budget" in decision.reason


def test_a_gain_within_the_noise_is_never_promoted():
    decision = decide_promotion(0.7, kl=1.0, kl_budget=5.0, champion_judge_score=None, ci_low=-0.02)
    assert not decision.promoted and "not above zero" in decision.reason


def test_win_rate_counts_ties_half_and_distinct_n_counts_unique_ngrams():
    assert win_rate([0.9, 0.1, 0.5, 0.7], [0.1, 0.9, 0.5, 0.2]) == (2 + 0.5) / 4
    assert distinct_n(["a b a b"], 2) == 2 / 3  # (a b), (b a), (a b): two distinct of three
    assert distinct_n(["a"], 2) == 0.0


@pytest.fixture
def local_registry(tmp_path, monkeypatch):
    """MLflow tracking and registry in a SQLite file of this test's own, reset afterwards."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield MlflowClient()
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def test_a_model_name_belongs_to_one_experiment(local_registry):
    client = local_registry
    client.create_registered_model("rlhf-policy", tags={EXPERIMENT_TAG: "rlhf-pipeline"})
    require_own_names(TrackingConfig(experiment="rlhf-pipeline"))  # the owner may register more versions
    with pytest.raises(ConfigError, match="'rlhf-policy' holds models of experiment 'rlhf-pipeline'"):
        require_own_names(TrackingConfig(experiment="rlhf-smoke"))
    require_own_names(TrackingConfig(experiment="rlhf-smoke", log_models=False))  # registers nothing
    # A model registered before names had owners belongs to the experiment of its first version's run.
    experiment = client.create_experiment("rlhf-pipeline-old")
    run = client.create_run(experiment)
    client.create_registered_model("old-policy")
    client.create_model_version("old-policy", "file:///nowhere", run_id=run.info.run_id)
    with pytest.raises(ConfigError, match="'old-policy' holds models of experiment 'rlhf-pipeline-old'"):
        require_own_names(TrackingConfig(experiment="rlhf-smoke", policy_model_name="old-policy"))


def test_the_smoke_profile_registers_under_names_of_its_own():
    default, smoke = load_params(REPO_ROOT / "params.yaml").tracking, load_params(REPO_ROOT / "profiles/smoke.yaml")
    names = {default.policy_model_name, default.reward_model_name}
    assert default.experiment != smoke.tracking.experiment
    assert names.isdisjoint({smoke.tracking.policy_model_name, smoke.tracking.reward_model_name})


def test_a_champion_judged_by_another_judge_is_not_compared_with(local_registry):
    from tasks.registry import CHAMPION, JUDGE_METRIC, JUDGE_TAG, promote_candidate

    client = local_registry
    client.create_registered_model("policy")
    for _ in range(3):
        client.create_model_version("policy", "file:///nowhere")
    metrics = {"eval/ppo_judge_score": 0.9, "eval/kl_ppo_to_sft": 1.0, "eval/judge_diff_ci_low": 0.1}
    first = promote_candidate("policy", "1", metrics, kl_budget=5.0, judge="sentiment")
    assert first.promoted and client.get_model_version("policy", "1").tags[JUDGE_TAG] == "sentiment"
    # chrF (0-100) against a sentiment probability (0-1): not comparable, so the candidate stays a candidate.
    other = promote_candidate("policy", "2", metrics | {JUDGE_METRIC: 40.0}, kl_budget=5.0, judge="chrf")
    assert not other.promoted and "judged by 'sentiment'" in other.reason
    same = promote_candidate("policy", "3", metrics | {JUDGE_METRIC: 0.95}, kl_budget=5.0, judge="sentiment")
    assert same.promoted and str(client.get_model_version_by_alias("policy", CHAMPION).version) == "3"
