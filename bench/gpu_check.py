"""`make gpu-check`: one table of what a GPU changes, for a short borrowed GPU or a user's own.

For each model size (SmolLM2-135M's config, and a ~1.2B config of the same family: SmolLM2-1.7B's shape with 16
layers), built with random weights (speed does not depend on them) and SmolLM2's tokenizer:
- PPO episodes/s against TRL's PPOTrainer (bench/ppo_vs_trl.py's settings), full fine-tuning and LoRA;
- SFT tokens/s against TRL's SFTTrainer (bench/sft_vs_trl.py's settings), padded and packed, with our model-FLOPs
  utilisation, 6 x parameters x tokens/s over the GPU's dense bf16 peak;
- each worker's peak `torch.cuda.max_memory_allocated` and mean `nvidia-smi` GPU utilisation.
The larger size runs PPO full and SFT padded only, to fit a borrowed GPU's minutes. Everything runs in bf16.

`--dry-run` runs the same code path on a CPU with tiny models (no MFU, no utilisation), so it cannot rot
between loans; `make test` runs it. Texts are generated word lists (no dataset download; speed does not depend
on them), so the check needs no package data.

Usage: python bench/gpu_check.py [--dry-run] [--json FILE] [--peak-tflops N] [--export-tokenizer]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import harness
import torch

BENCH = Path(__file__).resolve().parent
TOKENIZER_DIR = BENCH / "assets" / "smollm2-tokenizer"
SMOLLM2_135M = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9}
SMOLLM2_135M |= {"num_key_value_heads": 3, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5}
SIZES = {
    "135M": SMOLLM2_135M,
    # SmolLM2-1.7B's layer shape, 16 of its 24 layers: about 1.2B parameters.
    "1.2B": SMOLLM2_135M
    | {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32}
    | {"num_key_value_heads": 32},
}
DRY_RUN_SIZES = {
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4},
    "tiny-x2": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4},
}
# (script, worker arguments, label); the larger size runs the rows marked True.
BENCHMARKS = [
    ("ppo_vs_trl.py", ["--mode", "full"], "PPO full", True),
    ("ppo_vs_trl.py", ["--mode", "lora"], "PPO LoRA", False),
    ("sft_vs_trl.py", ["--packing", "no"], "SFT padded", True),
    ("sft_vs_trl.py", ["--packing", "yes"], "SFT packed", False),
]
# Dense bf16 peaks from the vendors' data sheets, TFLOP/s (no sparsity).
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}
WORDS = [
    "the",
    "a",
    "movie",
    "film",
    "story",
    "plot",
    "acting",
    "scene",
    "was",
    "is",
    "and",
    "but",
    "not",
    "very",
    "good",
    "bad",
    "great",
    "fun",
    "dull",
    "long",
    "short",
    "actor",
    "director",
    "music",
    "ending",
    "character",
    "time",
    "people",
    "love",
    "hate",
    "watch",
    "again",
    "never",
    "always",
    "best",
    "worst",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny models on whatever device there is")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak (default: from its name)")
    parser.add_argument("--export-tokenizer", action="store_true", help="copy SmolLM2's tokenizer to bench/assets")
    args = parser.parse_args()
    if args.export_tokenizer:
        export_tokenizer()
        return
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("gpu-check needs a CUDA GPU (torch sees none); `--dry-run` runs its code path on a CPU")
    peak = args.peak_tflops or bf16_peak_tflops()
    steps = ["--steps", "1", "--warmup", "1"] if args.dry_run else ["--steps", "4", "--warmup", "2"]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        texts_file = Path(scratch) / "texts.json"
        texts_file.write_text(json.dumps(generated_texts(400)))
        sizes = DRY_RUN_SIZES if args.dry_run else SIZES
        for index, (size, shape) in enumerate(sizes.items()):
            model_dir, parameters = build_model(shape, Path(scratch) / size, tiny_tokenizer=args.dry_run)
            for script, worker_args, label, on_larger in BENCHMARKS:
                if index > 0 and not on_larger:
                    continue
                inputs = ["--model-dir", model_dir, "--texts-file", str(texts_file), "--precision", "bf16"]
                row = {"size": size, "benchmark": label, "parameters": parameters}
                for side in ("ours", "trl"):
                    with UtilisationSampler() as utilisation:
                        figures = harness.run_worker(str(BENCH / script), side, [*worker_args, *inputs, *steps])
                    speed = figures.get("episodes_per_s") or figures["tokens_per_s"]
                    row[side] = {"speed": speed, "memory_gib": figures["peak_memory_bytes"] / harness.GIB}
                    row[side]["utilisation"] = utilisation.mean()
                row["unit"] = "episodes/s" if script.startswith("ppo") else "tokens/s"
                row["speed_ratio"] = row["ours"]["speed"] / row["trl"]["speed"]
                if row["unit"] == "tokens/s" and peak:
                    row["ours"]["mfu"] = 6 * parameters * row["ours"]["speed"] / (peak * 1e12)
                rows.append(row)
                print(table_line(row), flush=True)
    print(table(rows, harness.machine(), peak))
    if args.json:
        args.json.write_text(json.dumps({"machine": harness.machine(), "peak_tflops": peak, "rows": rows}, indent=2))


def build_model(shape: dict, folder: Path, tiny_tokenizer: bool) -> tuple[str, int]:
    """A Llama model of `shape` with random weights and SmolLM2's tokenizer (or the tiny one); (folder, params)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(tiny_tokenizer)
    config = LlamaConfig(
        rope_parameters={"rope_theta": 100000.0, "rope_type": "default"},
        vocab_size=len(tokenizer),
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **shape,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder), sum(p.numel() for p in model.parameters())


def build_tokenizer(tiny: bool):
    """SmolLM2's tokenizer, or for a dry run a tiny BPE one trained on the generated texts' words."""
    from transformers import AutoTokenizer

    if tiny:
        from rlhf_lib.models.tiny import build_bpe_tokenizer

        return build_bpe_tokenizer([" ".join(WORDS)] * 4)
    return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir())


def smollm2_tokenizer_dir() -> Path:
    """SmolLM2's tokenizer files: those `--export-tokenizer` left in bench/assets (what travels to a bare GPU
    machine), else the packaged SmolLM2's (a machine with the project's environment)."""
    if (TOKENIZER_DIR / "tokenizer.json").is_file():
        return TOKENIZER_DIR
    return Path(harness.smollm2_dir())


def export_tokenizer() -> None:
    """Copy SmolLM2's tokenizer files to bench/assets/smollm2-tokenizer, for a machine without the GGUF package."""
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(harness.smollm2_dir()).save_pretrained(TOKENIZER_DIR)
    print(f"SmolLM2's tokenizer -> {TOKENIZER_DIR}")


def generated_texts(count: int, words_per_text: int = 200) -> list[str]:
    """Texts of random words: long enough for a 128-token SFT example and a 16-token prompt each."""
    chooser = random.Random(0)
    return [" ".join(chooser.choices(WORDS, k=words_per_text)) for _ in range(count)]


def bf16_peak_tflops() -> float | None:
    """The GPU's dense bf16 peak from its name, or None (no MFU) when unknown or on a CPU."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


class UtilisationSampler:
    """Mean `nvidia-smi` GPU utilisation (%) over a `with` block, sampled every 0.5 s; None without nvidia-smi."""

    def __enter__(self) -> UtilisationSampler:
        self.samples: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        if shutil.which("nvidia-smi"):
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()

    def _sample(self) -> None:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "--id=0"]
        while not self.stop.is_set():
            answer = subprocess.run(query, capture_output=True, text=True, check=False).stdout.strip()
            if answer.isdigit():
                self.samples.append(float(answer))
            time.sleep(0.5)

    def mean(self) -> float | None:
        return statistics.mean(self.samples) if self.samples else None


def table_line(row: dict) -> str:
    ours, trl = row["ours"], row["trl"]

    def percent(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.0f}%"

    mfu = f"{100 * ours['mfu']:.1f}%" if "mfu" in ours else ""
    return (
        f"| {row['size']} | {row['benchmark']} | {ours['speed']:.1f} | {trl['speed']:.1f} | {row['unit']} "
        f"| {row['speed_ratio']:.2f}x | {mfu} | {ours['memory_gib']:.2f} | {trl['memory_gib']:.2f} "
        f"| {percent(ours['utilisation'])} | {percent(trl['utilisation'])} |"
    )


def table(rows: list[dict], machine: str, peak: float | None) -> str:
    peak_text = f"{peak:.0f} TFLOP/s" if peak else "unknown"
    header = (
        f"\n{machine}, bf16 peak {peak_text}\n\n"
        "| size | benchmark | ours | TRL | unit | ours / TRL | MFU (ours) | peak GiB ours | peak GiB TRL "
        "| GPU util ours | GPU util TRL |\n|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"
    )
    return "\n".join([header, *(table_line(row) for row in rows)])


if __name__ == "__main__":
    sys.exit(main())
