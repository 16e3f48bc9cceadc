"""The `evaluate` stage on tiny models: several samples per prompt, each prompt's mean going into the bootstrap,
and the precision the policies sample and are scored in.

The whole pipeline's evaluation (real judges, MLflow, DVC) is covered by the smoke runs; this checks the
stage's arithmetic against figures recomputed here from reports/samples.json.
"""

from __future__ import annotations

import json
import math
import shutil
from collections import defaultdict
from statistics import mean

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from rlhf_lib.config import ConfigError
from rlhf_lib.evaluation import paired_bootstrap_interval, win_rate
from tasks import evaluate
from tasks.params import params_from_text
from tests.pipeline.smoke_project import REPO_ROOT

PROMPTS = ["the movie was", "a terrible film", "i loved this", "the worst movie", "good good great", "the acting"]
CHARS = "tests.pipeline.test_evaluate_stage:response_chars"


def response_chars(prompts: list[str], responses: list[str]) -> list[float]:
    """A judge and a reward with whole-number scores, so means recomputed from the rounded samples file are exact."""
    return [float(len(response)) for response in responses]


def _run(tmp_path, monkeypatch, tiny_lm_dir, samples_per_prompt: int | None, load_model=None):
    params = yaml.safe_load((REPO_ROOT / "profiles/smoke.yaml").read_text())
    params["reward_sources"] = [{"name": "chars", "kind": "function", "function": CHARS, "weight": 1.0}]
    params["judges"] = [
        {"name": "chars", "kind": "function", "function": CHARS},
        {"name": "chrf", "kind": "reference", "metric": "chrf"},
    ]
    params["tracking"]["promotion_judge"] = "chars"
    if samples_per_prompt is not None:
        params["evaluate"]["samples_per_prompt"] = samples_per_prompt
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_lm_dir, tmp_path / "models/sft")
    shutil.copytree(tiny_lm_dir, tmp_path / "models/ppo")
    ppo = AutoModelForCausalLM.from_pretrained(tmp_path / "models/ppo")
    torch.manual_seed(1)
    with torch.no_grad():  # another policy, so PPO - SFT differs from prompt to prompt
        for weight in ppo.parameters():
            weight.add_(torch.randn_like(weight))
    ppo.save_pretrained(tmp_path / "models/ppo")
    (tmp_path / "data/prepared").mkdir(parents=True)
    rows = [{"prompt": prompt, "reference": f"{prompt} and the acting was wonderful"} for prompt in PROMPTS]
    (tmp_path / "data/prepared/eval_prompts.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "reports").mkdir()
    if load_model is not None:
        monkeypatch.setattr(evaluate, "load_language_model", load_model)
    metrics = evaluate.run(params_from_text(yaml.safe_dump(params)))
    return metrics, json.loads((tmp_path / "reports/samples.json").read_text())


@pytest.mark.parametrize("samples_per_prompt", [None, 3])
def test_judges_average_each_prompts_samples_before_the_bootstrap(
    tmp_path, monkeypatch, tiny_lm_dir, samples_per_prompt
):
    metrics, samples = _run(tmp_path, monkeypatch, tiny_lm_dir, samples_per_prompt)
    k = samples_per_prompt or 1  # the default is one sample per prompt

    assert [row["prompt"] for row in samples] == [prompt for prompt in PROMPTS for _ in range(k)]
    assert [row["sample"] for row in samples] == list(range(k)) * len(PROMPTS)
    by_prompt = defaultdict(lambda: {"sft": [], "ppo": []})
    for row in samples:
        for policy in ("sft", "ppo"):
            assert row[f"judge_chars_{policy}"] == len(row[f"{policy}_response"])
            by_prompt[row["prompt"]][policy].append(row[f"judge_chars_{policy}"])
    ppo = [mean(scores["ppo"]) for scores in by_prompt.values()]
    sft = [mean(scores["sft"]) for scores in by_prompt.values()]
    low, high = paired_bootstrap_interval(ppo, sft, samples=2000)
    assert low < high  # the policies differ, so the interval has a width to get wrong
    assert metrics["eval/judge/chars/ppo"] == pytest.approx(mean(ppo))
    assert metrics["eval/judge/chars/sft"] == pytest.approx(mean(sft))
    assert metrics["eval/judge/chars/win_rate_ppo"] == pytest.approx(win_rate(ppo, sft))
    assert (metrics["eval/judge_diff_ci_low"], metrics["eval/judge_diff_ci_high"]) == pytest.approx((low, high))
    assert metrics["eval/ppo_proxy_reward"] == pytest.approx(mean(row["proxy_reward_ppo"] for row in samples))
    # Length and the other fluency figures take each prompt's first response only.
    first = [row["sft_response"] for row in samples if row["sample"] == 0]
    assert metrics["eval/sft_response_words"] == pytest.approx(mean(len(text.split()) for text in first))
    if k > 1:  # the k responses to a prompt are samples, not one response repeated
        assert any(len({row["sft_response"] for row in samples if row["prompt"] == p}) > 1 for p in PROMPTS)


def test_samples_per_prompt_must_be_positive(tmp_path, monkeypatch, tiny_lm_dir):
    with pytest.raises(ConfigError, match="evaluate.samples_per_prompt"):
        _run(tmp_path, monkeypatch, tiny_lm_dir, 0)
    assert not (tmp_path / "reports/samples.json").exists()


def test_policies_sample_and_are_scored_in_the_precision_bf16_null_resolves_to(
    tmp_path, monkeypatch, tiny_lm_dir, default_precision
):
    """Sampling, the KL and the perplexity all run the policies in one precision, so the KL is estimated on the
    distribution the samples came from: bf16 weights under bf16 autocast where `bf16: null` means bf16, else fp32."""
    weight_dtypes, logits_dtypes = set(), set()
    load = evaluate.load_language_model

    def load_recording(cfg, dtype):
        model = load(cfg, dtype)
        weight_dtypes.update(parameter.dtype for parameter in model.parameters())
        model.lm_head.register_forward_hook(lambda module, args, out: logits_dtypes.add(out.dtype))
        return model

    metrics, _ = _run(tmp_path, monkeypatch, tiny_lm_dir, 2, load_model=load_recording)
    expected = torch.bfloat16 if default_precision == "bf16" else torch.float32
    assert weight_dtypes == logits_dtypes == {expected}
    assert 1.0 < metrics["eval/ppo_perplexity_under_sft"] < math.inf
