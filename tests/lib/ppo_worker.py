"""A small PPO run for the data-parallel tests: started by them under `accelerate launch`, and built in-process
for the one-process reference.

Sampling is greedy (top_k=1) and every prompt has the same token length, so a prompt's rollout does not depend
on the process that samples it, nor on its batch-mates: N processes with B/N prompts each must then compute
what one process with B prompts computes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from rlhf_lib.config import ModelConfig, PPOConfig
from rlhf_lib.models.loading import load_causal_lm, load_tokenizer
from rlhf_lib.models.value_head import AutoModelForCausalLMWithValueHead
from rlhf_lib.ppo.checkpoint import trainable_state
from rlhf_lib.ppo.trainer import PPOTrainer

# Three tokens each under the tiny test tokenizer: no prompt is padded in any batch. The first step's shards are
# ["the film was", "the movie was"] and ["i loved this", "the worst movie"]: 2 response tokens against 16 (see EOS in
# `build_trainer`), so the update must weight each process by its share of the tokens.
PROMPTS = [
    "the movie was",
    "the plot was",
    "a terrible film",
    "the worst movie",
    "the film was",
    "this story",
    "the story was",
    "i loved this",
]
EVAL_PROMPTS = ["the acting was", "a great film", "a boring plot"]
FIRST_UPDATE_GRADIENTS = "first_update_gradients.safetensors"
FINAL_WEIGHTS = "final_weights.safetensors"


def length_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """A score that differs between responses, so that whitening has something to whiten."""
    return [len(response) / 40 for response in responses]


def slowed(reward_fn, seconds: float):
    """`reward_fn`, taking `seconds` a call: gives a test time to kill a run between two checkpoints."""

    def reward(prompts: list[str], responses: list[str]) -> list[float]:
        time.sleep(seconds)
        return reward_fn(prompts, responses)

    return reward


def build_trainer(model_dir: str, out_dir: Path, reward_seconds: float = 0.0) -> PPOTrainer:
    model_cfg = ModelConfig(name_or_path=model_dir)
    tokenizer = load_tokenizer(model_cfg)
    # EOS becomes " was": greedy decoding of the tiny model repeats a prompt's last word, so responses to prompts
    # ending in "was" stop at once and the others run to max_new_tokens. Processes then hold unequal token counts.
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(tokenizer(" was", add_special_tokens=False)["input_ids"])[0]
    torch.manual_seed(0)  # the value head's init (the update's DistributedDataParallel copies rank 0's anyway)
    model = AutoModelForCausalLMWithValueHead(load_causal_lm(model_cfg))
    config = PPOConfig(
        output_dir=str(out_dir),
        batch_size=4,
        num_mini_batches=1,
        ppo_epochs=2,
        total_steps=4,
        max_new_tokens=8,
        top_k=1,
        learning_rate=3e-3,
        whiten_rewards=True,
        save_steps=1,
        eval_steps=2,
        bf16=False,
        seed=0,
    )
    reward = slowed(length_reward, reward_seconds) if reward_seconds else length_reward
    return PPOTrainer(
        config,
        model,
        tokenizer,
        PROMPTS,
        reward,
        metrics_sink=_metrics_file(out_dir),
        eval_prompts=EVAL_PROMPTS,
        judges={"length": length_reward},
    )


def record_first_update(trainer: PPOTrainer, path: Path) -> None:
    """Save the gradients the first optimizer step applies (after DistributedDataParallel averaged them)."""
    step = trainer.optimizer.step

    def recording_step(*args, **kwargs):
        if not path.exists() and trainer.processes.is_main:
            named = trainer.policy.named_parameters()
            save_file({name: p.grad.detach().clone() for name, p in named if p.grad is not None}, path)
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step


def _metrics_file(out_dir: Path):
    """A sink that appends each logged step to metrics-rank<N>.jsonl of the process that called it."""

    def sink(metrics: dict[str, float], step: int) -> None:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        with (out_dir / f"metrics-rank{rank}.jsonl").open("a") as file:
            file.write(json.dumps({"step": step, **metrics}) + "\n")

    return sink


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_dir")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--reward-seconds", type=float, default=0.0)
    args = parser.parse_args()
    trainer = build_trainer(args.model_dir, args.out_dir, args.reward_seconds)
    record_first_update(trainer, args.out_dir / FIRST_UPDATE_GRADIENTS)
    history = trainer.train()
    rank = trainer.processes.rank
    (args.out_dir / f"history-rank{rank}.json").write_text(json.dumps(history))
    if trainer.processes.is_main:
        save_file(trainable_state(trainer.policy), args.out_dir / FINAL_WEIGHTS)


if __name__ == "__main__":
    main()
