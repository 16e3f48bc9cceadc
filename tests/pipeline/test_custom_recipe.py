"""The `custom` recipe end to end at smoke scale with real DVC and MLflow: chat SFT data, conversational
preferences, chat prompts, evaluation rows with references; a reward of a trained model plus a function; judges
of chrF and a function; no trained judge (its stage skips); PPO in 2 processes (`launch`)."""

from __future__ import annotations

import json

import pytest
import sacrebleu
import yaml

from tasks.cli import STAGES
from tests.pipeline.smoke_project import copy_project, project_env, run, stages_run

pytestmark = pytest.mark.integration
SMOKE_SECTIONS = ("policy", "reward_model", "sft", "reward", "ppo", "evaluate")


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    project = copy_project(tmp_path_factory.mktemp("custom_project"))
    params = yaml.safe_load((project / "recipes/custom/params.yaml").read_text())
    smoke = yaml.safe_load((project / "profiles/smoke.yaml").read_text())
    params |= {section: smoke[section] for section in SMOKE_SECTIONS}  # tiny models, a few steps
    params["tracking"] |= {"experiment": "rlhf-custom-smoke", "promotion_kl_budget": 50.0}
    params["tracking"] |= {"policy_model_name": "custom-smoke-policy", "reward_model_name": "custom-smoke-rm"}
    # PPO in 2 processes under `accelerate launch` (CPU, gloo): the MLflow checks below then also show that only
    # the main process logged (each step once) and that its metrics cover the whole batch.
    params["launch"] = {"num_processes": 2, "stages": ["ppo"]}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = project_env(project)
    result = run(["dvc", "repro"], project, env)
    assert result.returncode == 0, result.stderr
    return project, env, result.stdout


def test_every_stage_runs_the_judge_stage_skips_and_a_second_repro_is_a_noop(reproduced):
    project, env, output = reproduced
    assert stages_run(output) == set(STAGES)
    assert "judge: skipped, no judge is `trained`" in output
    assert json.loads((project / "metrics/judge.json").read_text())["judge/skipped"] == 1.0
    manifest = json.loads((project / "data/prepared/manifest.json").read_text())
    assert manifest["sft.jsonl"] == "messages" and manifest["judge_train.jsonl"] is None
    again = run(["dvc", "repro"], project, env)
    assert again.returncode == 0 and not stages_run(again.stdout)


def test_reward_sources_and_judges_are_reported_and_add_up(reproduced):
    project = reproduced[0]
    evaluation = json.loads((project / "metrics/evaluate.json").read_text())
    for policy in ("sft", "ppo"):
        by_hand = evaluation[f"eval/{policy}_reward/reward_model"] + 2.0 * evaluation[f"eval/{policy}_reward/right_sum"]
        assert evaluation[f"eval/{policy}_proxy_reward"] == pytest.approx(by_hand, abs=1e-6)
    for judge in ("chrf", "right_sum"):
        low, high = evaluation[f"eval/judge/{judge}/diff_ci_low"], evaluation[f"eval/judge/{judge}/diff_ci_high"]
        difference = evaluation[f"eval/judge/{judge}/ppo"] - evaluation[f"eval/judge/{judge}/sft"]
        assert low <= difference + 1e-9 and difference - 1e-9 <= high
    assert evaluation["eval/ppo_judge_score"] == evaluation["eval/judge/chrf/ppo"]  # the promotion judge
    samples = json.loads((project / "reports/samples.json").read_text())
    references = [json.loads(line)["reference"] for line in (project / "data/prepared/eval_prompts.jsonl").open()]
    for sample, reference in zip(samples, references, strict=False):
        expected = sacrebleu.sentence_chrf(sample["ppo_response"], [reference]).score
        assert sample["judge_chrf_ppo"] == pytest.approx(expected, abs=1e-3)
    history = (project / "metrics/ppo_history.csv").read_text().splitlines()
    assert len(history) == 1 + 4  # header and the smoke profile's 4 PPO steps
    states = list((project / "checkpoints/ppo").glob("*/checkpoints/checkpoint-4/trainer_state.json"))
    assert [json.loads(path.read_text())["num_processes"] for path in states] == [2]


def test_mlflow_has_each_reward_source_on_its_own(reproduced):
    from mlflow import MlflowClient

    project = reproduced[0]
    uri = f"sqlite:///{project}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("rlhf-custom-smoke")
    runs = {r.data.tags.get("rlhf.stage"): r for r in client.search_runs([experiment.experiment_id])}
    ppo = runs["ppo"].info.run_id
    for source in ("reward_model", "right_sum"):
        assert len(client.get_metric_history(ppo, f"ppo/reward/{source}")) == 4
    assert "eval/judge/chrf/win_rate_ppo" in runs["evaluate"].data.metrics
    # The smoke profile evaluates on held-out prompts before PPO and every 2 of its 4 steps; judges against KL.
    for key in ("ppo/held_out/kl", "ppo/held_out/reward", "ppo/held_out/judge/chrf", "ppo/held_out/judge/right_sum"):
        assert sorted(m.step for m in client.get_metric_history(ppo, key)) == [0, 2, 4], key
    assert client.get_metric_history(ppo, "ppo/held_out/kl")[0].value == pytest.approx(0.0, abs=1e-4)
    assert "held_out_vs_kl.png" in [artifact.path for artifact in client.list_artifacts(ppo)]
    assert client.get_model_version("custom-smoke-policy", "1").tags["eval/judge_diff_ci_low"]
