"""Precision: bf16 autocast must follow fp32's loss curve, or bf16 may not be a default; what `bf16: null`
resolves to; every path that depends on it, under both precisions on any CPU; trainers of both in one process."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from rlhf_lib.config import ConfigError, GenerationConfig, LoraSettings, ModelConfig, PPOConfig, SFTConfig
from rlhf_lib.generation import sampling_dtype
from rlhf_lib.models import small_rows_linear
from rlhf_lib.models.loading import load_causal_lm, load_tokenizer
from rlhf_lib.models.value_head import AutoModelForCausalLMWithValueHead
from rlhf_lib.ppo.trainer import PPOTrainer
from rlhf_lib.precision import DEFAULT_PRECISION_ENV, fast_bf16_available, use_bf16
from rlhf_lib.sft_trainer import SFTTrainer
from tests.conftest import CORPUS

STEPS = 30


def _sft_losses(model_dir: str, output_dir, bf16: bool, steps: int = STEPS) -> list[float]:
    cfg = ModelConfig(name_or_path=model_dir)
    tokenizer = load_tokenizer(cfg, padding_side="right")
    sft = SFTConfig(
        output_dir=str(output_dir),
        max_steps=steps,
        learning_rate=3e-3,
        per_device_batch_size=4,
        logging_steps=1,
        save_steps=1000,
        max_length=32,
        bf16=bf16,
        seed=0,
    )
    losses: list[float] = []
    sink = lambda metrics, step: losses.extend([metrics["sft/loss"]] if "sft/loss" in metrics else [])  # noqa: E731
    trainer = SFTTrainer(
        load_causal_lm(cfg), tokenizer, sft, Dataset.from_list([{"text": t} for t in CORPUS]), metrics_sink=sink
    )
    trainer.train()
    return losses


def test_bf16_autocast_sft_follows_the_fp32_loss_curve(tiny_lm_dir, tmp_path):
    fp32 = _sft_losses(tiny_lm_dir, tmp_path / "fp32", bf16=False)
    bf16 = _sft_losses(tiny_lm_dir, tmp_path / "bf16", bf16=True)
    assert len(fp32) == len(bf16) == STEPS
    assert fp32[-1] < 0.6 * fp32[0]  # a curve that moves, so following it means something
    gaps = [abs(a - b) / a for a, b in zip(fp32, bf16, strict=True)]
    assert max(gaps) < 0.02, gaps  # measured: 0.0013 at most


@pytest.mark.parametrize("requested", [True, False])
def test_an_explicit_precision_wins_over_the_hardware_default(requested):
    assert use_bf16(requested) is requested


def test_the_default_follows_the_environment_variable_then_the_hardware(monkeypatch):
    monkeypatch.setenv(DEFAULT_PRECISION_ENV, "bf16")
    assert use_bf16(None) is True
    monkeypatch.setenv(DEFAULT_PRECISION_ENV, "fp32")
    assert use_bf16(None) is False
    monkeypatch.setenv(DEFAULT_PRECISION_ENV, "fp16")
    with pytest.raises(ConfigError, match=DEFAULT_PRECISION_ENV):
        use_bf16(None)
    monkeypatch.delenv(DEFAULT_PRECISION_ENV)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    for amx in (True, False):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx)
        assert fast_bf16_available() is amx and use_bf16(None) is amx


def test_a_device_type_asks_about_that_device(monkeypatch):
    """With a bf16 GPU and a CPU without bf16 instructions, work that stays on the CPU (the stages that sample)
    resolves `bf16: null` to fp32, and GPU work to bf16."""
    monkeypatch.delenv(DEFAULT_PRECISION_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert use_bf16(None) is True and use_bf16(None, "cuda") is True
    assert use_bf16(None, "cpu") is False and use_bf16(None, "mps") is False
    assert sampling_dtype(GenerationConfig()) == torch.float32
    assert sampling_dtype(GenerationConfig(), "cuda") == torch.bfloat16
    assert sampling_dtype(GenerationConfig(bf16=True)) == torch.bfloat16


def test_trainer_stages_use_eager_attention_only_in_bf16_on_a_cpu(tiny_lm_dir, tmp_path, default_precision):
    cfg = ModelConfig(name_or_path=tiny_lm_dir)
    model = load_causal_lm(cfg)
    loaded_with = model.config._attn_implementation
    sft = SFTConfig(output_dir=str(tmp_path), max_steps=1, max_length=32)
    trainer = SFTTrainer(model, load_tokenizer(cfg, padding_side="right"), sft, Dataset.from_list([{"text": "a b"}]))
    assert trainer.args.bf16 is (default_precision == "bf16")
    expected = "eager" if default_precision == "bf16" else loaded_with
    assert loaded_with != "eager" and trainer.model.config._attn_implementation == expected


def _ppo_trainer(model_dir: str, output_dir, bf16: bool, lora: LoraSettings | None = None) -> PPOTrainer:
    cfg = ModelConfig(name_or_path=model_dir, lora=lora)
    tokenizer = load_tokenizer(cfg)
    model = AutoModelForCausalLMWithValueHead(load_causal_lm(cfg))
    ppo = PPOConfig(output_dir=str(output_dir), batch_size=4, max_new_tokens=4, save_steps=100, bf16=bf16)
    return PPOTrainer(ppo, model, tokenizer, ["the movie was", "i loved"], lambda p, r: [1.0] * len(p))


def _value_dtypes_in_one_step(trainer: PPOTrainer) -> set[torch.dtype]:
    """The dtypes the value head computed in during one PPO step (bf16 under autocast, else fp32)."""
    dtypes: set[torch.dtype] = set()
    hook = trainer.policy.v_head.summary.register_forward_hook(lambda module, args, out: dtypes.add(out.dtype))
    try:
        assert trainer.step(trainer.prompts_for_step(0)) is not None
    finally:
        hook.remove()
    return dtypes


def test_trainers_of_both_precisions_work_one_after_another_in_one_process(tiny_lm_dir, tmp_path):
    # A bf16 SFT Trainer first: before the fix, the PPO trainer after it refused fp32 (accelerate's state).
    sft_losses = _sft_losses(tiny_lm_dir, tmp_path / "sft", bf16=True, steps=2)
    assert len(sft_losses) == 2
    fp32 = _ppo_trainer(tiny_lm_dir, tmp_path / "fp32", bf16=False)
    bf16 = _ppo_trainer(tiny_lm_dir, tmp_path / "bf16", bf16=True, lora=LoraSettings(r=4, alpha=8))
    fp32_again = _ppo_trainer(tiny_lm_dir, tmp_path / "fp32_again", bf16=False)
    # Each keeps its own precision, whichever was built last.
    assert _value_dtypes_in_one_step(fp32) == {torch.float32}
    assert torch.bfloat16 in _value_dtypes_in_one_step(bf16)
    assert _value_dtypes_in_one_step(fp32_again) == {torch.float32}
    # bf16 stores the frozen LoRA base in bf16 and trains fp32 adapters; fp32 keeps everything fp32.
    frozen = {p.dtype for p in bf16.policy.parameters() if not p.requires_grad}
    trained = {p.dtype for p in bf16.policy.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trained == {torch.float32}
    assert {p.dtype for p in fp32.policy.parameters()} == {torch.float32}


def test_fp32_sampling_uses_the_small_rows_kernel_and_bf16_autocast_does_not(
    tiny_lm_dir, tmp_path, monkeypatch, default_precision
):
    calls = []
    kernel = small_rows_linear.small_rows_linear
    monkeypatch.setattr(small_rows_linear, "small_rows_linear", lambda *args: calls.append(1) or kernel(*args))
    trainer = _ppo_trainer(tiny_lm_dir, tmp_path, bf16=None)
    trainer.rollout(trainer.prompts_for_step(0))
    if default_precision == "fp32":
        assert small_rows_linear.available() and calls
    else:
        assert not calls  # under autocast the linears fall through to torch's bf16 matmuls
