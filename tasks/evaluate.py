"""Stage `evaluate`: SFT vs PPO on held-out prompts; writes metrics/evaluate.json and reports/samples.json.

Scores: the reward model (the proxy PPO optimised), the held-out judge (a classifier trained on
sentences neither the reward model nor PPO saw) and VADER (rule-based, a second opinion), so a
gain on the judges is not just reward hacking of the proxy.
"""

from __future__ import annotations

from statistics import mean

from rlhf_lib.config import DataConfig, ModelConfig
from rlhf_lib.data.formats import prompt_text
from rlhf_lib.data.sources import load_rows
from rlhf_lib.generation import generate_responses, sequence_kl
from rlhf_lib.io import atomic_write_json
from rlhf_lib.models.loading import load_causal_lm, load_sequence_scorer, load_tokenizer
from rlhf_lib.ppo.rollout import RewardModelScorer
from tasks.judge import load_judge
from tasks.params import DATA_DIR, MODELS_DIR, REPORTS_DIR, PipelineParams

POLICIES = ("sft", "ppo")


def distinct_n(texts: list[str], n: int) -> float:
    """Share of unique word n-grams among all n-grams (diversity; 1.0 = no repetition)."""
    grams = [tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def vader_scores(texts: list[str]) -> list[float]:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    return [analyzer.polarity_scores(text)["compound"] for text in texts]


def run(params: PipelineParams, sink=None) -> dict[str, float]:
    cfg = params.evaluate
    sft_cfg, ppo_cfg = (
        ModelConfig(name_or_path=str(MODELS_DIR / "sft")),
        ModelConfig(name_or_path=str(MODELS_DIR / "ppo")),
    )
    tokenizer = load_tokenizer(sft_cfg)
    rows = load_rows(DataConfig(source=str(DATA_DIR / "eval_prompts.jsonl")))
    prompts = [prompt_text(row, tokenizer) for row in rows.select(range(min(cfg.num_prompts, len(rows))))]
    sft_model, ppo_model = load_causal_lm(sft_cfg).eval(), load_causal_lm(ppo_cfg).eval()
    sft_texts, _ = generate_responses(sft_model, tokenizer, prompts, cfg.generation)
    ppo_texts, ppo_ids = generate_responses(ppo_model, tokenizer, prompts, cfg.generation)
    kl = sequence_kl(ppo_model, sft_model, tokenizer, prompts, ppo_ids)

    reward_cfg = ModelConfig(name_or_path=str(MODELS_DIR / "reward"))
    scorer = RewardModelScorer(load_sequence_scorer(reward_cfg), load_tokenizer(reward_cfg, padding_side="right"))
    texts = {"sft": sft_texts, "ppo": ppo_texts}
    full = {name: [p + t for p, t in zip(prompts, texts[name], strict=True)] for name in POLICIES}
    judge = load_judge()
    scores = {
        "reward_model_score": {name: scorer(prompts, texts[name]) for name in POLICIES},
        "judge_score": {name: judge(full[name]) for name in POLICIES},
        "judge_vader": {name: vader_scores(full[name]) for name in POLICIES},
    }
    metrics = {
        "eval/kl_ppo_to_sft": mean(kl),
        "eval/judge_win_rate_ppo": win_rate(scores["judge_score"]["ppo"], scores["judge_score"]["sft"]),
        "eval/vader_win_rate_ppo": win_rate(scores["judge_vader"]["ppo"], scores["judge_vader"]["sft"]),
    }
    for name in POLICIES:
        metrics |= {f"eval/{name}_{kind}": mean(per_policy[name]) for kind, per_policy in scores.items()}
        metrics |= {
            f"eval/{name}_response_words": mean(len(t.split()) for t in texts[name]),
            f"eval/{name}_distinct_2": distinct_n(texts[name], 2),
        }
    # Prompt and the two responses first, where a reader (and MLflow's table view) looks; scores after.
    samples = [
        {"prompt": prompt, **{f"{name}_response": texts[name][i] for name in POLICIES}}
        | {f"{kind}_{name}": round(per_policy[name][i], 4) for kind, per_policy in scores.items() for name in POLICIES}
        for i, prompt in enumerate(prompts)
    ]
    atomic_write_json(REPORTS_DIR / "samples.json", samples, sort_keys=False)
    return metrics


def win_rate(challenger: list[float], incumbent: list[float]) -> float:
    """Share of prompts where the challenger scores higher (ties count half)."""
    wins = sum(c > i for c, i in zip(challenger, incumbent, strict=True))
    ties = sum(c == i for c, i in zip(challenger, incumbent, strict=True))
    return (wins + 0.5 * ties) / len(challenger)
