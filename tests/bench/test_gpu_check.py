"""`make gpu-check`'s code path on a CPU (`--dry-run`, tiny models), so that it works when a GPU is lent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import gpu_check  # noqa: E402  (bench scripts import their siblings by name)


def _llama_parameters(shape: dict, vocab_size: int) -> int:
    """Parameters of a Llama with tied embeddings, from its shape: embeddings, then per layer the attention and
    MLP projections and two norms, then the final norm."""
    hidden, heads = shape["hidden_size"], shape["num_attention_heads"]
    kv_width = hidden // heads * shape.get("num_key_value_heads", heads)
    attention = 2 * hidden * hidden + 2 * hidden * kv_width
    mlp = 3 * hidden * shape["intermediate_size"]
    return vocab_size * hidden + shape["num_hidden_layers"] * (attention + mlp + 2 * hidden) + hidden


def test_dry_run_fills_the_table_for_both_sizes(tmp_path):
    out = tmp_path / "gpu_check.json"
    command = [sys.executable, str(BENCH / "gpu_check.py"), "--dry-run", "--json", str(out), "--peak-tflops", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = result["rows"]
    expected = [(size, label) for size in gpu_check.DRY_RUN_SIZES for _, _, label, larger in gpu_check.BENCHMARKS]
    expected = [row for index, row in enumerate(expected) if index < 4 or row[1] in ("PPO full", "SFT padded")]
    assert [(row["size"], row["benchmark"]) for row in rows] == expected
    vocab_size = len(gpu_check.build_tokenizer(tiny=True))
    for row in rows:
        assert row["parameters"] == _llama_parameters(gpu_check.DRY_RUN_SIZES[row["size"]], vocab_size)
        for side in ("ours", "trl"):
            assert row[side]["speed"] > 0 and row[side]["memory_gib"] > 0
            assert row[side]["utilisation"] is None  # no nvidia-smi on a CPU machine
        assert row["speed_ratio"] == pytest.approx(row["ours"]["speed"] / row["trl"]["speed"])
        if row["unit"] == "tokens/s":  # model-FLOPs utilisation against the 1 TFLOP/s peak given
            assert row["ours"]["mfu"] == pytest.approx(6 * row["parameters"] * row["ours"]["speed"] / 1e12)
    assert "| tiny-x2 | SFT padded |" in done.stdout
