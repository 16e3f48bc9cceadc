"""The detox, qa, calculator and seq2seq recipes end to end at smoke scale (tiny models, a few steps) with real DVC
and MLflow: their data builders, function rewards (detox, calculator, seq2seq) and a trained one (qa), function and
reference judges, tool-use episodes (calculator), an encoder-decoder policy (seq2seq), fluency figures, and every
MLflow run and registered version tagged with the recipe."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from tasks.cli import STAGES
from tests.pipeline.smoke_project import copy_project, project_env, run, stages_run

pytestmark = pytest.mark.integration
SMOKE_SECTIONS = ("policy", "reward_model", "sft", "reward", "ppo", "evaluate")
SMALL_DATA = {  # detox prompts short enough for the tiny tokenizer, which spends a token on every few characters
    "detox": {"sft_examples": 40, "preference_pairs": 20, "ppo_prompts": 16, "eval_prompts": 8, "prompt_max_words": 8},
    "qa": {"preference_pairs": 40, "ppo_prompts": 16, "eval_prompts": 8},
    "calculator": {"sft_examples": 40, "ppo_prompts": 16, "eval_prompts": 8},
    "seq2seq": {"sft_examples": 40, "ppo_prompts": 16, "eval_prompts": 8},
}
JUDGES = {
    "detox": ["not_profane"],
    "qa": ["answer_similarity", "chrf"],
    "calculator": ["accuracy"],
    "seq2seq": ["exact", "chrf"],
}


def _reproduce(recipe: str, tmp_path) -> tuple:
    project = copy_project(tmp_path)
    params = yaml.safe_load((project / f"recipes/{recipe}/params.yaml").read_text())
    smoke = yaml.safe_load((project / "profiles/smoke.yaml").read_text())
    # seq2seq keeps its own policy: the recipe's T5 (0.9M parameters) is the encoder-decoder under test.
    params |= {section: smoke[section] for section in SMOKE_SECTIONS if (recipe, section) != ("seq2seq", "policy")}
    params["prepare"] |= SMALL_DATA[recipe]
    params["ppo"]["max_prompt_length"] = 160  # chat prompts (qa, calculator), in the tiny tokenizer's many tokens
    if recipe == "calculator":  # its word problems, in the tiny tokenizer's tokens, fill the smoke SFT max_length
        params["environment"]["max_length"] = 24
        params["sft"]["max_length"] = 200
    if recipe == "qa":  # chrF ranks the SFT policy's answers here, so the test can score every pair again itself
        params["policy_pairs"] |= {"metric": "chrf", "min_gap": 5.0, "max_prompts": 6, "samples_per_prompt": 3}
    params["tracking"] |= {"experiment": f"{recipe}-smoke", "promotion_kl_budget": 50.0}
    params["tracking"] |= {"policy_model_name": f"{recipe}-smoke-policy", "reward_model_name": f"{recipe}-smoke-rm"}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = run(["dvc", "repro"], project, project_env(project))
    assert result.returncode == 0, result.stderr
    return project, result.stdout


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("recipe", ["detox", "qa", "calculator", "seq2seq"])
def test_recipe_runs_end_to_end_and_tags_its_runs(recipe, tmp_path):
    from mlflow import MlflowClient

    project, output = _reproduce(recipe, tmp_path)
    assert stages_run(output) == set(STAGES)
    assert "judge: skipped, no judge is `trained`" in output
    assert ("reward: skipped" in output) == (recipe != "qa")  # detox's and calculator's rewards are functions

    prepared = project / "data/prepared"
    manifest = json.loads((prepared / "manifest.json").read_text())
    sft_format = {"detox": "text", "qa": "messages", "calculator": "prompt_completion", "seq2seq": "prompt_completion"}
    assert manifest["sft.jsonl"] == sft_format[recipe]
    ppo_prompts, eval_rows = _lines(prepared / "ppo_prompts.jsonl"), _lines(prepared / "eval_prompts.jsonl")
    assert len(ppo_prompts) == 16 and len(eval_rows) == 8
    held_out = {json.dumps(row["prompt"]) for row in eval_rows}
    assert not held_out & {json.dumps(row["prompt"]) for row in ppo_prompts}
    if recipe == "qa":  # questions: held out from SFT and preferences too, each with its reference answer
        trained = {json.dumps(row["messages"][:1]) for row in _lines(prepared / "sft.jsonl")}
        trained |= {json.dumps(row["prompt"]) for row in _lines(prepared / "preference.jsonl")}
        assert not held_out & trained and all(row["reference"] for row in eval_rows)
        _check_policy_pairs(project, held_out)
    else:
        assert "pairs: none written, policy_pairs is not set" in output
    if recipe == "detox":  # openings of rude sentences, cut before they turn offensive
        from profanity_check import predict_prob

        assert max(predict_prob([row["prompt"] for row in eval_rows + ppo_prompts])) < 0.5

    evaluation = json.loads((project / "metrics/evaluate.json").read_text())
    for judge in JUDGES[recipe]:
        assert {f"eval/judge/{judge}/{key}" for key in ("sft", "ppo", "win_rate_ppo")} <= evaluation.keys()
    for policy in ("sft", "ppo"):
        assert 1.0 < evaluation[f"eval/{policy}_perplexity_under_sft"] < math.inf
    samples = json.loads((project / "reports/samples.json").read_text())
    if recipe == "detox":  # the judge's score is 0 exactly for responses its word list flags
        from better_profanity import profanity

        for sample in samples:
            assert sample["judge_not_profane_ppo"] == float(not profanity.contains_profanity(sample["ppo_response"]))

    if recipe == "calculator":  # tool-use episodes in PPO and evaluation, and the policies judged without tools too
        assert {"eval/without_tools/judge/accuracy/ppo", "eval/ppo_tool_calls_per_response"} <= evaluation.keys()
        ppo_run = next(r for r in _runs(project, recipe) if r.data.tags.get("rlhf.stage") == "ppo")
        assert {"ppo/env/tool_calls_per_episode", "ppo/env/turns_per_episode"} <= ppo_run.data.metrics.keys()

    uri = f"sqlite:///{project}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(f"{recipe}-smoke").experiment_id])
    assert {"sft", "ppo", "evaluate"} <= {r.data.tags.get("rlhf.stage") for r in runs}
    assert {r.data.tags["rlhf.recipe"] for r in runs} == {recipe}  # the parent run and every stage's
    assert client.get_model_version(f"{recipe}-smoke-policy", "1").tags["rlhf.recipe"] == recipe
    if recipe == "seq2seq":  # the registered policy loads back as an encoder-decoder and answers in words
        import mlflow

        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        loaded = mlflow.transformers.load_model(f"models:/{recipe}-smoke-policy/1", return_type="components")
        assert type(loaded["model"]).__name__ == "T5ForConditionalGeneration"
        assert loaded["model"].config.is_encoder_decoder
        encoded = loaded["tokenizer"](eval_rows[0]["prompt"], return_tensors="pt")
        answer = loaded["model"].generate(**encoded, max_new_tokens=4, do_sample=False)
        assert answer[0, 0].item() == loaded["model"].config.decoder_start_token_id


def _check_policy_pairs(project, held_out: set[str]) -> None:
    """The SFT policy's answers to training questions, paired by chrF against each question's own answer."""
    import sacrebleu

    pairs = _lines(project / "data/policy_pairs.jsonl")
    answers = {
        json.dumps(row["prompt"]): row["chosen"][-1]["content"]
        for row in _lines(project / "data/prepared/preference.jsonl")
    }
    asked = {json.dumps(pair["prompt"]) for pair in pairs}
    assert pairs and len(asked) <= 6 and asked <= answers.keys() and not asked & held_out
    for pair in pairs:
        reference = answers[json.dumps(pair["prompt"])]
        chosen, rejected = (
            sacrebleu.sentence_chrf(pair[side][-1]["content"], [reference]).score for side in ("chosen", "rejected")
        )
        assert chosen - rejected >= 5.0
    assert json.loads((project / "metrics/reward.json").read_text())["reward/policy_pairs"] == len(pairs)


def _runs(project, recipe: str) -> list:
    from mlflow import MlflowClient

    uri = f"sqlite:///{project}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return client.search_runs([client.get_experiment_by_name(f"{recipe}-smoke").experiment_id])
