"""Stage `ppo`: optimise the SFT policy against the reward of params.yaml with KL to the SFT reference.

Writes models/ppo and metrics/ppo_history.csv (reward and KL per step, for `dvc plots`).
"""

from __future__ import annotations

import csv
import io
from functools import partial
from pathlib import Path

from rlhf_lib.callbacks import MetricsSink
from rlhf_lib.config import DataConfig, ModelConfig
from rlhf_lib.data.formats import prompt_text
from rlhf_lib.data.sources import load_rows
from rlhf_lib.io import atomic_write_text
from rlhf_lib.models.loading import load_language_model, load_tokenizer, require_fits_context
from rlhf_lib.models.value_head import with_value_head
from rlhf_lib.ppo.trainer import PPOTrainer
from rlhf_lib.rewards import RewardFunction
from tasks.environment import build_environment, environment_files
from tasks.params import DATA_DIR, METRICS_DIR, MODELS_DIR, PipelineParams, checkpoint_dir, with_output_dir
from tasks.scoring import REWARD_MODEL_DIR, build_judges, build_reward, probe_reward, reward_code_and_weights

HISTORY_COLUMNS = ["step", "objective/scores", "objective/kl", "objective/rlhf_reward", "response_length"]


class HistoryFile:
    """metrics/ppo_history.csv, rewritten atomically after every logged step.

    Written as training goes, so a run killed mid-way keeps its curve; a resumed run replaces the
    rows from its checkpoint on and keeps the ones before, and a fresh run (step 1) starts anew.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = list(csv.DictReader(path.open())) if path.is_file() else []

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        self.rows = [row for row in self.rows if int(row["step"]) < step]
        self.rows.append({"step": step} | {key: metrics[f"ppo/{key}"] for key in HISTORY_COLUMNS[1:]})
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, buffer.getvalue())


def _held_out(params: PipelineParams, tokenizer) -> tuple[list[str], dict[str, RewardFunction]]:
    """The first evaluation prompts and every judge, for the held-out evaluation during PPO (`ppo.eval_steps`)."""
    rows = load_rows(DataConfig(source=str(DATA_DIR / "eval_prompts.jsonl")))
    rows = rows.select(range(min(params.evaluate.ppo_eval_prompts, len(rows))))
    prompts = [prompt_text(row, tokenizer) for row in rows]
    if "reference" not in rows.column_names:
        return prompts, {name: partial(judge, references=None) for name, judge in build_judges(params).items()}
    # By prompt, as each process of a multi-process run judges its own share; a prompt listed twice is scored
    # against its first reference, once.
    reference_of: dict[str, str] = {}
    for prompt, reference in zip(prompts, rows["reference"], strict=True):
        reference_of.setdefault(prompt, reference)

    def with_references(judge: RewardFunction) -> RewardFunction:
        return lambda prompts, responses: judge(prompts, responses, references=[reference_of[p] for p in prompts])

    return list(reference_of), {name: with_references(judge) for name, judge in build_judges(params).items()}


def run(params: PipelineParams, sink: MetricsSink | None = None) -> dict[str, float]:
    data = DATA_DIR / "ppo_prompts.jsonl"
    sft_dir = MODELS_DIR / "sft"
    settings = {
        # eval_steps only adds measurements: changing it must not restart training.
        "ppo": params.ppo.model_dump(exclude={"output_dir", "eval_steps"}),
        "lora": params.policy.lora,
        "reward_sources": [source.model_dump() for source in params.reward_sources],
        "environment": params.environment.model_dump() if params.environment else None,
    }
    inputs = [data, sft_dir, REWARD_MODEL_DIR, *reward_code_and_weights(params), *environment_files(params.environment)]
    cfg = with_output_dir(params.ppo, checkpoint_dir("ppo", settings, inputs))
    # The SFT model (LoRA merged) is both the start and, with the new adapter off, the reference.
    policy_cfg = ModelConfig(
        name_or_path=str(sft_dir), lora=params.policy.lora, trust_remote_code=params.policy.trust_remote_code
    )
    env = params.environment
    response_key, response_tokens = (
        ("ppo.max_new_tokens", cfg.max_new_tokens) if env is None else ("environment.max_length", env.max_length)
    )
    require_fits_context(policy_cfg, cfg.max_prompt_length + response_tokens, response_key)
    tokenizer = load_tokenizer(policy_cfg)
    model = with_value_head(load_language_model(policy_cfg))
    prompts = [prompt_text(row, tokenizer) for row in load_rows(DataConfig(source=str(data)))]
    reward = build_reward(params)
    probe_reward(reward, prompts)
    history_file = HistoryFile(METRICS_DIR / "ppo_history.csv")

    def log_step(metrics: dict[str, float], step: int) -> None:
        if step > 0:  # step 0 carries only the held-out evaluation of the starting policy
            history_file(metrics, step)
        if sink:
            sink(metrics, step)

    eval_prompts, judges = _held_out(params, tokenizer) if cfg.eval_steps else (None, None)
    trainer = PPOTrainer(
        cfg,
        model,
        tokenizer,
        prompts,
        reward,
        metrics_sink=log_step,
        eval_prompts=eval_prompts,
        judges=judges,
        environment=build_environment(env),
    )
    history = trainer.train()
    trainer.save_policy(MODELS_DIR / "ppo")
    # From the file, not `history`: a run resumed at its last step trains no step of its own.
    rows = history_file.rows
    tail = rows[-max(1, len(rows) // 5) :]
    return {
        "ppo/final_scores": sum(float(row["objective/scores"]) for row in tail) / max(len(tail), 1),
        "ppo/final_kl": sum(float(row["objective/kl"]) for row in tail) / max(len(tail), 1),
        "ppo/steps": cfg.total_steps,
        "ppo/resumed_from_step": history[0]["step"] - 1 if history else cfg.total_steps,
        "ppo/skipped_batches": trainer.skipped_batches,
    }
