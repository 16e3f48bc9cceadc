"""Stage `pairs`: preference pairs from the SFT policy's own answers; writes data/policy_pairs.jsonl.

The recipe's pairs teach a reward model what its data shows (in the qa recipe: a question's own answer against
another question's), which can say little about which of two of the policy's own answers is better, and that is
what PPO asks of it. So, with `policy_pairs` set, the SFT policy samples a few answers to each training prompt of
data/prepared/preference.jsonl, a reference metric scores them and the prompt's chosen answer against that chosen
answer, and every two whose scores differ by at least `min_gap` become a pair. The `reward` stage adds them to its
training pairs; its held-out pairs stay the recipe's, and the prompts sampled here are those of its training split.

Writes an empty file (and says so) when `policy_pairs` is off or no reward source is `trained`.
"""

from __future__ import annotations

import json
from statistics import mean
from typing import TYPE_CHECKING

from rlhf_lib.config import ConfigError, DataConfig, ModelConfig
from rlhf_lib.data.formats import prompt_text
from rlhf_lib.data.ranking import ranked_pairs
from rlhf_lib.data.sources import load_rows, split_train_eval
from rlhf_lib.io import atomic_write_jsonl
from tasks.params import DATA_DIR, MODELS_DIR, POLICY_PAIRS_FILE, PipelineParams

if TYPE_CHECKING:
    from rlhf_lib.callbacks import MetricsSink


def run(params: PipelineParams, sink: MetricsSink | None = None) -> dict[str, float]:
    cfg = params.policy_pairs
    if cfg is None or not params.trains_reward_model():
        reason = "policy_pairs is not set" if cfg is None else "no reward source is `trained` (see reward_sources)"
        print(f"pairs: none written, {reason}")
        atomic_write_jsonl(POLICY_PAIRS_FILE, [])
        return {"pairs/skipped": 1.0}
    # Imported here: they load transformers' models (~4 s), which most recipes, skipping this stage, need not.
    from rlhf_lib.generation import generate_responses, sampling_dtype
    from rlhf_lib.models.loading import load_language_model, load_tokenizer
    from tasks.reward import HELD_OUT_FRACTION
    from tasks.scoring import answer_metric

    rows = load_rows(DataConfig(source=str(DATA_DIR / "preference.jsonl"), seed=params.reward.seed))
    if "prompt" not in rows.column_names:
        raise ConfigError(
            "policy_pairs: the SFT policy answers each pair's prompt, but data/prepared/preference.jsonl has no "
            "`prompt` column (implicit-prompt pairs); set policy_pairs to null"
        )
    train, _ = split_train_eval(rows, HELD_OUT_FRACTION, params.reward.seed)  # the reward stage's split
    firsts = {}  # one row per distinct prompt, in file order: its chosen answer is the reference
    for row in train:
        firsts.setdefault(json.dumps(row["prompt"]), row)
    prompts_rows = list(firsts.values())[: cfg.max_prompts]

    policy = ModelConfig(name_or_path=str(MODELS_DIR / "sft"))
    tokenizer = load_tokenizer(policy)
    k = cfg.samples_per_prompt
    prompts = [prompt_text(row, tokenizer) for row in prompts_rows for _ in range(k)]
    dtype = sampling_dtype(cfg.generation)
    samples, _ = generate_responses(load_language_model(policy, dtype).eval(), tokenizer, prompts, cfg.generation)
    references = [_answer(row["chosen"]) for row in prompts_rows]
    metric = answer_metric(cfg.metric, cfg.model or params.reward_model)
    scores = metric(samples, [reference for reference in references for _ in range(k)])
    own_scores = metric(references, references)  # a chosen answer against itself: the metric's best

    pairs, reference_chosen = [], 0
    for i, (row, reference) in enumerate(zip(prompts_rows, references, strict=True)):
        answers, answer_scores = (
            [reference, *samples[i * k : (i + 1) * k]],
            [own_scores[i], *scores[i * k : (i + 1) * k]],
        )
        for better, worse in ranked_pairs(answers, answer_scores, cfg.min_gap):
            pairs.append(
                {
                    "prompt": row["prompt"],
                    "chosen": _like(row["chosen"], better),
                    "rejected": _like(row["chosen"], worse),
                }
            )
            reference_chosen += better == reference
    atomic_write_jsonl(POLICY_PAIRS_FILE, pairs)
    print(
        f"pairs: {len(pairs)} pairs from {len(samples)} answers to {len(prompts_rows)} prompts -> {POLICY_PAIRS_FILE}"
    )
    return {
        "pairs/prompts": len(prompts_rows),
        "pairs/pairs": len(pairs),
        "pairs/sft_mean_score": mean(scores),  # how close the SFT policy's answers come to the chosen ones
        "pairs/reference_chosen": reference_chosen,  # the rest rank two of the policy's own answers
    }


def _answer(answer: str | list[dict]) -> str:
    """The answer's text: a string as it is, a conversational answer's last turn."""
    return answer[-1]["content"] if isinstance(answer, list) else answer


def _like(answer: str | list[dict], text: str) -> str | list[dict]:
    """`text` in the form of the recipe's answers (one assistant turn when they are conversations)."""
    return [{"role": "assistant", "content": text}] if isinstance(answer, list) else text
