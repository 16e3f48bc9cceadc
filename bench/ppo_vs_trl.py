"""PPO episodes/s and peak memory: our PPOTrainer against TRL 1.12.0's, side by side in one invocation.

Identical settings on both sides: SmolLM2-135M-Instruct policy, the same checkpoint with a scalar head
as the reward model, batch 8, responses of exactly 24 tokens (min_new_tokens = max_new_tokens, so both
sides generate the same number of tokens), one PPO epoch of one minibatch, the same 16-token IMDb prompts,
no gradient checkpointing (TRL's default turns it on), full fine-tuning and LoRA (r 16, all linear layers).
TRL trains a separate value model (a copy of the checkpoint with a scalar head); ours puts a value head on
the policy's trunk.

Usage: python bench/ppo_vs_trl.py [--steps N] [--warmup N] [--rounds N] [--precision fp32 bf16] [--quick]
Each worker (`--side ours|trl --mode full|lora --precision P`) prints its figures as JSON.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import harness
import torch

BATCH_SIZE = 8
RESPONSE_LENGTH = 24
PROMPT_TOKENS = 16
LEARNING_RATE = 1e-5
TEMPERATURE = 1.0
LORA_R, LORA_ALPHA = 16, 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", choices=["ours", "trl"], help="run one worker (internal)")
    parser.add_argument("--mode", choices=["full", "lora"], default="full", help="worker: full fine-tuning or LoRA")
    parser.add_argument(
        "--precision", nargs="+", choices=["fp32", "bf16"], help="default: fp32 and bf16 on CPU, bf16 on GPU"
    )
    parser.add_argument("--steps", type=int, default=6, help="measured PPO steps per worker")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured PPO steps first")
    parser.add_argument("--rounds", type=int, default=1, help="workers per side and setting (alternating)")
    parser.add_argument("--modes", nargs="+", choices=["full", "lora"], default=["full", "lora"])
    parser.add_argument("--quick", action="store_true", help="2 measured steps after 1 warm-up, one round")
    harness.add_worker_inputs(parser)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup, args.rounds = 2, 1, 1
    # On a CPU both: fp32 is the reference setting, bf16 our default where bf16 matmuls are fast.
    precisions = args.precision or (["bf16"] if harness.device() == "cuda" else ["fp32", "bf16"])
    if args.side:
        run_worker(args.side, args.mode, precisions[0], args.steps, args.warmup, args.model_dir, args.texts_file)
        return

    results = []
    for precision in precisions:
        for mode in args.modes:
            worker_args = ["--mode", mode, "--precision", precision, "--steps", str(args.steps)]
            runs = harness.run_alternating(__file__, [*worker_args, "--warmup", str(args.warmup)], args.rounds)
            name = f"ppo_{mode}_{precision}"
            results.append(harness.summarise(name, runs["ours"], runs["trl"], "episodes_per_s", "ep/s"))
    print("\n".join(results))
    settings = f"batch {BATCH_SIZE}, response {RESPONSE_LENGTH}, {args.steps} steps x {args.rounds} rounds"
    harness.append_results("ppo_vs_trl.py", results, settings)


def prompt_ids(tokenizer, count: int, texts_file: str | None) -> list[list[int]]:
    """`count` text openings of exactly PROMPT_TOKENS tokens that survive decode -> encode unchanged."""
    prompts = []
    for review in harness.texts(4 * count, texts_file):
        ids = tokenizer(review, add_special_tokens=False)["input_ids"][:PROMPT_TOKENS]
        if tokenizer(tokenizer.decode(ids), add_special_tokens=False)["input_ids"] == ids:
            prompts.append(ids)
    return prompts[:count]


def run_worker(
    side: str, mode: str, precision: str, steps: int, warmup: int, model_dir: str | None, texts_file: str | None
) -> None:
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    model_dir = model_dir or harness.smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    prompts = prompt_ids(tokenizer, 64, texts_file)
    with tempfile.TemporaryDirectory() as output_dir:
        run = run_ours if side == "ours" else run_trl
        step_seconds = run(model_dir, tokenizer, prompts, mode, precision, steps + warmup, output_dir)
    measured = step_seconds[warmup:]
    # The median step, not the mean: a burst of load from another process on a shared machine stalls a
    # 2-thread step many times over, and one such step would otherwise dominate the figure.
    harness.report({"episodes_per_s": BATCH_SIZE / statistics.median(measured), "step_seconds": measured})


def frozen_dtype(precision: str) -> torch.dtype:
    """The reward model is frozen: with bf16 both sides get it in bf16 (no fp32 master weights needed)."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def force_response_length(model) -> None:
    # Both trainers pass a GenerationConfig whose unset fields generate() fills from the model's own.
    model.generation_config.min_new_tokens = RESPONSE_LENGTH


def run_ours(model_dir, tokenizer, prompts, mode, precision, total_steps, output_dir) -> list[float]:
    from rlhf_lib.config import LoraSettings, ModelConfig, PPOConfig
    from rlhf_lib.models.loading import load_causal_lm, load_sequence_scorer, load_tokenizer
    from rlhf_lib.models.value_head import AutoModelForCausalLMWithValueHead
    from rlhf_lib.ppo.trainer import PPOTrainer
    from rlhf_lib.rewards import RewardModelScorer

    device = harness.device()
    lora = LoraSettings(r=LORA_R, alpha=LORA_ALPHA) if mode == "lora" else None
    trunk = load_causal_lm(ModelConfig(name_or_path=model_dir, lora=lora))
    force_response_length(trunk)
    model = AutoModelForCausalLMWithValueHead(trunk).to(device)
    reward_cfg = ModelConfig(name_or_path=model_dir)
    reward_model = load_sequence_scorer(reward_cfg, dtype=frozen_dtype(precision)).to(device)
    scorer = RewardModelScorer(reward_model, load_tokenizer(reward_cfg, padding_side="right"))
    cfg = PPOConfig(
        output_dir=output_dir,
        total_steps=total_steps,
        batch_size=BATCH_SIZE,
        num_mini_batches=1,
        ppo_epochs=1,
        learning_rate=LEARNING_RATE,
        max_prompt_length=PROMPT_TOKENS,
        max_new_tokens=RESPONSE_LENGTH,
        temperature=TEMPERATURE,
        bf16=precision == "bf16",
    )
    texts = [tokenizer.decode(ids) for ids in prompts]
    trainer = PPOTrainer(cfg, model, tokenizer, texts, scorer)
    seconds = []
    for step in range(total_steps):
        started = time.perf_counter()
        trainer.step(trainer.prompts_for_step(step))
        seconds.append(time.perf_counter() - started)
    return seconds


def run_trl(model_dir, tokenizer, prompts, mode, precision, total_steps, output_dir) -> list[float]:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    force_response_length(policy)
    value_model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
    reward_model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=1, dtype=frozen_dtype(precision)
    )
    for scorer in (value_model, reward_model):
        scorer.config.pad_token_id = tokenizer.pad_token_id
    args = PPOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=BATCH_SIZE,
        gradient_accumulation_steps=1,
        num_mini_batches=1,
        num_ppo_epochs=1,
        total_episodes=BATCH_SIZE * total_steps,
        local_rollout_forward_batch_size=BATCH_SIZE,
        response_length=RESPONSE_LENGTH,
        stop_token="eos",
        temperature=TEMPERATURE,
        learning_rate=LEARNING_RATE,
        num_sample_generations=0,
        gradient_checkpointing=False,
        bf16=precision == "bf16",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        logging_steps=1000,
        use_cpu=harness.device() == "cpu",
    )
    peft_config = None
    if mode == "lora":
        peft_config = LoraConfig(
            r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
        )
    dataset = Dataset.from_dict({"input_ids": prompts})
    trainer = PPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=policy,
        ref_model=None,
        reward_model=reward_model,
        train_dataset=dataset,
        value_model=value_model,
        eval_dataset=dataset,
        peft_config=peft_config,
    )
    timer = harness.StepTimer()
    trainer.add_callback(timer)
    trainer.train()
    return timer.seconds


if __name__ == "__main__":
    main()
