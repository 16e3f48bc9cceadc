"""Stage `reward`: train the reward model on preference pairs; writes models/reward and metrics/reward.json.

The recipe's pairs are joined by the pairs people labelled on the labelling page (`human_feedback`) and by pairs
of the SFT policy's own answers (`policy_pairs`, sampled by the `pairs` stage).

Skipped (and says so) when no reward source is `trained`: a reward of functions or ready-made classifiers needs
no reward model.
"""

from __future__ import annotations

import json
from pathlib import Path

from datasets import Dataset, concatenate_datasets

from rlhf_lib.callbacks import MetricsSink
from rlhf_lib.config import ConfigError, DataConfig
from rlhf_lib.data.sources import load_rows, split_train_eval
from rlhf_lib.models.loading import load_sequence_scorer, load_tokenizer
from rlhf_lib.reward_trainer import RewardTrainer
from tasks.labelling.store import preference_rows, read_labels
from tasks.params import DATA_DIR, POLICY_PAIRS_FILE, PipelineParams
from tasks.scoring import REWARD_MODEL_DIR
from tasks.training import SKIPPED_FILE, fit_and_save, skip, stage_config

HELD_OUT_FRACTION = 0.1


def run(params: PipelineParams, sink: MetricsSink | None = None) -> dict[str, float]:
    if not params.trains_reward_model():
        return skip("reward", REWARD_MODEL_DIR, "no reward source is `trained` (see reward_sources)")
    data, labels = DATA_DIR / "preference.jsonl", Path(params.human_feedback.preferences)
    cfg = stage_config("reward", params.reward, params.reward_model, [data, labels, POLICY_PAIRS_FILE])
    rows = load_rows(DataConfig(source=str(data), seed=cfg.seed))
    train, held_out = split_train_eval(rows, HELD_OUT_FRACTION, cfg.seed)
    human = human_pairs(labels, params.human_feedback.upsample, conversational=isinstance(rows[0]["chosen"], list))
    policy = _policy_pairs(params)
    if human or policy:  # the held-out pairs stay the recipe's, so accuracy compares across label batches
        train = concatenate_datasets([train, Dataset.from_list(human + policy, features=train.features)])
    tokenizer = load_tokenizer(params.reward_model, padding_side="right")
    if isinstance(rows[0]["chosen"], list) and tokenizer.chat_template is None:
        # Encoder tokenizers (MiniLM, BERT) have no chat template. Render conversations as the policy renders its
        # prompts: that is the text the reward model scores during PPO. Saved with the model, so it stays.
        tokenizer.chat_template = load_tokenizer(params.policy).chat_template
        if tokenizer.chat_template is None:
            raise ConfigError(
                "prepare.preference: the pairs are chat messages, but neither the reward model's tokenizer nor the "
                "policy's has a chat template to render them with"
            )
    trainer = RewardTrainer(load_sequence_scorer(params.reward_model), tokenizer, cfg, train, held_out, sink)
    evaluation, resumed_from = fit_and_save(trainer, tokenizer, REWARD_MODEL_DIR)
    (REWARD_MODEL_DIR / SKIPPED_FILE).unlink(missing_ok=True)  # a trained model replaces an earlier skip
    return {
        "reward/eval_accuracy": evaluation["eval_accuracy"],
        "reward/eval_margin": evaluation["eval_margin"],
        "reward/eval_loss": evaluation["eval_loss"],
        "reward/resumed_from_step": resumed_from,
        "reward/human_pairs": len(human),
        "reward/policy_pairs": len(policy),
    }


def _policy_pairs(params: PipelineParams) -> list[dict]:
    """The `pairs` stage's pairs, each `policy_pairs.upsample` times (none when policy_pairs is off)."""
    if params.policy_pairs is None or not params.policy_pairs.upsample:
        return []
    if not POLICY_PAIRS_FILE.is_file():
        raise ConfigError(f"policy_pairs: {POLICY_PAIRS_FILE} is missing; run `rlhf stage pairs` first")
    with POLICY_PAIRS_FILE.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()] * params.policy_pairs.upsample


def human_pairs(labels: Path, upsample: int, conversational: bool) -> list[dict]:
    """The labelled pairs (A or B chosen) as training rows, each `upsample` times; as chat turns when the recipe's
    pairs are conversations (the labelling page shows a prompt as text: one user turn)."""
    rows = preference_rows(read_labels(labels)) * upsample
    if conversational:
        rows = [
            {
                "prompt": [{"role": "user", "content": row["prompt"]}],
                "chosen": [{"role": "assistant", "content": row["chosen"]}],
                "rejected": [{"role": "assistant", "content": row["rejected"]}],
            }
            for row in rows
        ]
    return rows
