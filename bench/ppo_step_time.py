"""Time one PPO iteration (rollout + 2 epochs x 2 minibatches of updates) on the tiny test model.

Usage: python bench/ppo_step_time.py [--steps N]. Prints the median seconds per step.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from rlhf_lib.config import ModelConfig, PPOConfig
from rlhf_lib.models.loading import load_causal_lm, load_tokenizer
from rlhf_lib.models.tiny import save_tiny_causal_lm
from rlhf_lib.models.value_head import AutoModelForCausalLMWithValueHead
from rlhf_lib.ppo.trainer import PPOTrainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        model_cfg = ModelConfig(name_or_path=str(save_tiny_causal_lm(f"{folder}/lm")))
        tokenizer = load_tokenizer(model_cfg)
        model = AutoModelForCausalLMWithValueHead(load_causal_lm(model_cfg))
        cfg = PPOConfig(output_dir=f"{folder}/ppo", batch_size=8, num_mini_batches=2, ppo_epochs=2, max_new_tokens=24)
        trainer = PPOTrainer(
            cfg,
            model,
            tokenizer,
            ["the movie was", "a terrible film"] * 4,
            lambda prompts, responses: [len(r) / 100 for r in responses],
        )
        times = []
        for step in range(args.steps + 2):
            started = time.perf_counter()
            trainer.step(trainer.prompts_for_step(step))
            times.append(time.perf_counter() - started)
        median = statistics.median(times[2:])  # the first steps include one-off warm-up
        print(f"tiny model, batch 8, 24 new tokens, torch {torch.__version__}, {torch.get_num_threads()} threads:")
        print(f"PPO step median {median * 1000:.1f} ms over {args.steps} steps ({8 / median:.0f} episodes/s)")


if __name__ == "__main__":
    main()
