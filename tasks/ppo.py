"""Stage `ppo`: optimise the SFT policy against the reward model with KL to the SFT reference.

Writes models/ppo and metrics/ppo_history.csv (reward and KL per step, for `dvc plots`).
"""

from __future__ import annotations

import csv
import io

from rlhf_lib.callbacks import MetricsSink
from rlhf_lib.config import DataConfig, ModelConfig
from rlhf_lib.data.formats import prompt_text
from rlhf_lib.data.sources import load_rows
from rlhf_lib.io import atomic_write_text
from rlhf_lib.models.loading import load_causal_lm, load_sequence_scorer, load_tokenizer
from rlhf_lib.models.value_head import AutoModelForCausalLMWithValueHead
from rlhf_lib.ppo.rollout import RewardModelScorer
from rlhf_lib.ppo.trainer import PPOTrainer
from tasks.params import DATA_DIR, METRICS_DIR, MODELS_DIR, PipelineParams, checkpoint_dir

HISTORY_COLUMNS = ["step", "objective/scores", "objective/kl", "objective/rlhf_reward", "response_length"]


def run(params: PipelineParams, sink: MetricsSink | None = None) -> dict[str, float]:
    data = DATA_DIR / "ppo_prompts.jsonl"
    sft_dir, reward_dir = MODELS_DIR / "sft", MODELS_DIR / "reward"
    settings = {"ppo": params.ppo, "lora": params.policy.lora, "seed": params.seed}
    cfg = params.ppo_config().model_copy(
        update={"output_dir": str(checkpoint_dir("ppo", settings, [data, sft_dir, reward_dir])), "seed": params.seed}
    )
    # The SFT model (LoRA merged) is both the start and, with the new adapter off, the reference.
    policy_cfg = ModelConfig(
        name_or_path=str(sft_dir), lora=params.policy.lora, trust_remote_code=params.policy.trust_remote_code
    )
    tokenizer = load_tokenizer(policy_cfg)
    model = AutoModelForCausalLMWithValueHead(load_causal_lm(policy_cfg))
    reward_cfg = ModelConfig(name_or_path=str(reward_dir), trust_remote_code=params.reward_model.trust_remote_code)
    scorer = RewardModelScorer(load_sequence_scorer(reward_cfg), load_tokenizer(reward_cfg, padding_side="right"))
    prompts = [prompt_text(row, tokenizer) for row in load_rows(DataConfig(source=str(data)))]
    trainer = PPOTrainer(cfg, model, tokenizer, prompts, scorer, metrics_sink=sink)
    history = trainer.train()
    trainer.save_policy(MODELS_DIR / "ppo")
    _write_history(history, first_step=cfg.total_steps - len(history) + 1)
    tail = history[-max(1, len(history) // 5) :]
    return {
        "ppo/final_scores": sum(m["objective/scores"] for m in tail) / len(tail),
        "ppo/final_kl": sum(m["objective/kl"] for m in tail) / len(tail),
        "ppo/steps": cfg.total_steps,
    }


def _write_history(history: list[dict[str, float]], first_step: int) -> None:
    path = METRICS_DIR / "ppo_history.csv"
    # A resumed run only has its own steps: keep the rows the interrupted run wrote before them.
    kept = []
    if path.is_file() and first_step > 1:
        kept = [row for row in csv.DictReader(path.open()) if int(row["step"]) < first_step]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS)
    writer.writeheader()
    writer.writerows(kept)
    for offset, metrics in enumerate(history):
        writer.writerow({"step": first_step + offset, **{k: metrics[k] for k in HISTORY_COLUMNS[1:]}})
    atomic_write_text(path, buffer.getvalue())
