"""Stage `evaluate`: SFT vs PPO on held-out prompts; writes metrics/evaluate.json and reports/samples.json.

Each judge in params.yaml scores both policies' responses to the same prompts: its means, the PPO win rate and
a 95% paired-bootstrap interval on the mean difference (with 48 prompts a win rate is uncertain by about
+-0.14, so the interval is the number to read). With `samples_per_prompt` above 1 each prompt's score is the mean
over its samples, and the bootstrap still resamples prompts. The proxy reward PPO optimised is reported beside
them, so a gain on the proxy that the judges do not share shows as reward hacking; so are fluency figures (response
length, distinct-2, perplexity under the SFT model), so a gain bought with silence or gibberish shows too.
"""

from __future__ import annotations

from statistics import mean

import torch

from rlhf_lib.config import DataConfig, ModelConfig
from rlhf_lib.data.formats import prompt_text
from rlhf_lib.data.sources import load_rows
from rlhf_lib.evaluation import distinct_n, paired_bootstrap_interval, win_rate
from rlhf_lib.generation import (
    generate_episodes,
    generate_responses,
    perplexity,
    sampling_autocast,
    sampling_dtype,
    sequence_kl,
)
from rlhf_lib.io import atomic_write_json
from rlhf_lib.models.loading import load_language_model, load_tokenizer
from rlhf_lib.rewards import checked_scores
from tasks.environment import build_environment
from tasks.params import DATA_DIR, MODELS_DIR, REPORTS_DIR, PipelineParams
from tasks.scoring import build_judges, build_reward

POLICIES = ("sft", "ppo")


def run(params: PipelineParams, sink=None) -> dict[str, float]:
    cfg = params.evaluate
    sft_cfg, ppo_cfg = (
        ModelConfig(name_or_path=str(MODELS_DIR / "sft")),
        ModelConfig(name_or_path=str(MODELS_DIR / "ppo")),
    )
    tokenizer = load_tokenizer(sft_cfg)
    rows = load_rows(DataConfig(source=str(DATA_DIR / "eval_prompts.jsonl")))
    rows = rows.select(range(min(cfg.num_prompts, len(rows))))
    prompts = [prompt_text(row, tokenizer) for row in rows]
    k = cfg.samples_per_prompt
    # Each prompt's k samples side by side: responses i*k .. i*k + k-1 answer prompt i.
    sampled_prompts = [prompt for prompt in prompts for _ in range(k)]
    references = [ref for ref in rows["reference"] for _ in range(k)] if "reference" in rows.column_names else None
    dtype = sampling_dtype(cfg.generation)
    sft_model, ppo_model = load_language_model(sft_cfg, dtype).eval(), load_language_model(ppo_cfg, dtype).eval()
    models = {"sft": sft_model, "ppo": ppo_model}
    environment = build_environment(params.environment)
    texts, ids, masks = {}, {}, {}
    for name, model in models.items():
        if environment is None:
            texts[name], ids[name] = generate_responses(model, tokenizer, sampled_prompts, cfg.generation)
            masks[name] = None
        else:  # the policies answer with their tools, as PPO trained them; only their own tokens are scored
            texts[name], ids[name], masks[name] = generate_episodes(
                model, tokenizer, sampled_prompts, cfg.generation, environment
            )
    # The fluency and KL figures take each prompt's first response: one per prompt, whatever k is.
    first = {name: texts[name][::k] for name in POLICIES}
    first_ids = {name: ids[name][::k] for name in POLICIES}
    first_masks = {name: None if masks[name] is None else masks[name][::k] for name in POLICIES}
    # Scored at the temperature and precision the samples came from, so the estimate is unbiased for the KL between
    # the two policies as they sample here (EvaluateConfig keeps top-k/top-p off for this reason).
    temperature = cfg.generation.temperature
    with sampling_autocast(sft_model, cfg.generation):
        kl = sequence_kl(ppo_model, sft_model, tokenizer, prompts, first_ids["ppo"], temperature, first_masks["ppo"])
        # Fluency: how natural the SFT model (PPO's reference) finds each policy's responses; gibberish that a
        # reward or judge happens to like shows as a perplexity far above the SFT policy's own.
        perplexities = {
            name: perplexity(sft_model, tokenizer, prompts, first_ids[name], first_masks[name]) for name in POLICIES
        }

    reward = build_reward(params)
    proxy = {name: reward(sampled_prompts, texts[name]) for name in POLICIES}
    judges = build_judges(params)
    scores = {
        judge: {
            name: checked_scores(judge, lambda p, r, score=score: score(p, r, references), sampled_prompts, texts[name])
            for name in POLICIES
        }
        for judge, score in judges.items()
    }

    metrics = {"eval/kl_ppo_to_sft": mean(kl)}
    for name in POLICIES:
        metrics[f"eval/{name}_proxy_reward"] = mean(proxy[name])
        metrics |= {f"eval/{name}_reward/{source}": mean(values) for source, values in proxy[name].components.items()}
        metrics[f"eval/{name}_response_words"] = mean(len(t.split()) for t in first[name])
        metrics[f"eval/{name}_distinct_2"] = distinct_n(first[name], 2)
        metrics[f"eval/{name}_perplexity_under_sft"] = perplexities[name]
    for judge, per_policy in scores.items():
        ppo, sft = per_prompt_means(per_policy["ppo"], k), per_prompt_means(per_policy["sft"], k)
        metrics |= judge_metrics(f"eval/judge/{judge}", ppo, sft, cfg.bootstrap_samples)
    if environment is not None:  # what each policy manages alone: the same prompts, no tool answers its calls
        alone = {
            name: generate_responses(models[name], tokenizer, sampled_prompts, cfg.generation)[0] for name in POLICIES
        }
        for judge, score in judges.items():
            per_policy = {
                name: per_prompt_means(score(sampled_prompts, alone[name], references), k) for name in POLICIES
            }
            prefix = f"eval/without_tools/judge/{judge}"
            metrics |= judge_metrics(prefix, per_policy["ppo"], per_policy["sft"], cfg.bootstrap_samples)
        metrics |= {f"eval/{name}_tool_calls_per_response": _tool_calls(masks[name]) for name in POLICIES}
    # The gating judge's figures under fixed names, so `dvc exp show`, the registry and dashboards need no judge name.
    gate = f"eval/judge/{params.promotion_judge()}"
    metrics |= {
        "eval/sft_judge_score": metrics[f"{gate}/sft"],
        "eval/ppo_judge_score": metrics[f"{gate}/ppo"],
        "eval/judge_win_rate_ppo": metrics[f"{gate}/win_rate_ppo"],
        "eval/judge_diff_ci_low": metrics[f"{gate}/diff_ci_low"],
        "eval/judge_diff_ci_high": metrics[f"{gate}/diff_ci_high"],
    }
    # Prompt and the two responses first, where a reader (and MLflow's table view) looks; scores after.
    per_response = {"proxy_reward": proxy} | {f"judge_{judge}": per_policy for judge, per_policy in scores.items()}
    samples = [
        {"prompt": prompt, **{f"{name}_response": texts[name][i] for name in POLICIES}, "sample": i % k}
        | {f"{kind}_{name}": round(values[name][i], 4) for kind, values in per_response.items() for name in POLICIES}
        for i, prompt in enumerate(sampled_prompts)
    ]
    atomic_write_json(REPORTS_DIR / "samples.json", samples, sort_keys=False)
    return metrics


def judge_metrics(prefix: str, ppo: list[float], sft: list[float], bootstrap_samples: int) -> dict[str, float]:
    """Means, the PPO win rate, and the 95% paired-bootstrap interval on mean(PPO - SFT)."""
    low, high = paired_bootstrap_interval(ppo, sft, samples=bootstrap_samples)
    return {
        f"{prefix}/sft": mean(sft),
        f"{prefix}/ppo": mean(ppo),
        f"{prefix}/win_rate_ppo": win_rate(ppo, sft),
        f"{prefix}/diff_ci_low": low,
        f"{prefix}/diff_ci_high": high,
    }


def per_prompt_means(scores: list[float], k: int) -> list[float]:
    """Each prompt's mean score over its k consecutive samples."""
    return [mean(scores[start : start + k]) for start in range(0, len(scores), k)]


def _tool_calls(masks: list[torch.Tensor]) -> float:
    """Mean tool answers per episode: the runs of 0 in each action mask (an episode opens with a policy token)."""
    return mean(int(((mask[1:] == 0) & (mask[:-1] == 1)).sum()) for mask in masks)
