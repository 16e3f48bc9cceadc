"""SFT and reward trainers: behaviour on tiny models, resume, and the metrics hook."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from rlhf_lib.config import LoraSettings, ModelConfig, RewardConfig, SFTConfig
from rlhf_lib.errors import NonFiniteError
from rlhf_lib.hf_training import COMPLETE_MARKER, last_complete_checkpoint, save_final, train_resuming
from rlhf_lib.models.loading import load_causal_lm, load_sequence_scorer, load_tokenizer
from rlhf_lib.reward_trainer import RewardTrainer, pairwise_reward_loss
from rlhf_lib.sft_trainer import SFTTrainer

# Every test here runs with `bf16: null` resolved to fp32 and to bf16 (autocast, eager attention).
pytestmark = pytest.mark.usefixtures("default_precision")

SENTENCES = ["the movie was great and the acting was wonderful", "i loved this story , it was fun and moving"]


@pytest.mark.parametrize("lora", [None, LoraSettings(r=8, alpha=16)])
def test_sft_lowers_held_out_loss(tiny_lm_dir, tmp_path, lora):
    cfg = ModelConfig(name_or_path=tiny_lm_dir, lora=lora)
    tokenizer = load_tokenizer(cfg, padding_side="right")
    # A template the model can learn; the held-out rows use word pairs never seen in training.
    words = ["great", "fun", "good", "bad", "dull", "awful", "nice", "sad"]
    rows = [{"prompt": f"the movie was {a}", "completion": f" and the acting was {b}"} for a in words for b in words]
    train, held_out = Dataset.from_list(rows[8:]), Dataset.from_list(rows[:8])
    sft = SFTConfig(
        output_dir=str(tmp_path),
        max_steps=40 if lora is None else 80,
        learning_rate=3e-3 if lora is None else 2e-2,
        per_device_batch_size=8,
        logging_steps=10,
        save_steps=100,
        max_length=32,
    )
    logged = []
    trainer = SFTTrainer(
        load_causal_lm(cfg),
        tokenizer,
        sft,
        train,
        held_out,
        metrics_sink=lambda metrics, step: logged.append((step, metrics)),
    )
    before = trainer.evaluate()["eval_loss"]
    train_resuming(trainer)
    after = trainer.evaluate()["eval_loss"]
    # a random tiny base limits what LoRA alone can learn, hence the smaller bar for it
    assert after < before - (2.0 if lora is None else 0.5), (before, after)
    assert any("sft/loss" in metrics for _, metrics in logged)
    save_final(trainer.model, tokenizer, tmp_path / "final")
    reloaded = load_causal_lm(ModelConfig(name_or_path=str(tmp_path / "final")))
    assert not hasattr(reloaded, "peft_config")  # LoRA merged into a standalone model


def test_sft_resumes_from_its_last_checkpoint(tiny_lm_dir, tmp_path):
    cfg = ModelConfig(name_or_path=tiny_lm_dir)
    tokenizer = load_tokenizer(cfg, padding_side="right")
    rows = Dataset.from_list([{"text": s} for s in SENTENCES * 8])

    logged_steps: list[int] = []

    def trainer_for(max_steps):
        sft = SFTConfig(
            output_dir=str(tmp_path),
            max_steps=max_steps,
            per_device_batch_size=4,
            save_steps=2,
            max_length=32,
            logging_steps=1,
        )
        sink = lambda metrics, step: "sft/loss" in metrics and logged_steps.append(step)  # noqa: E731
        return SFTTrainer(load_causal_lm(cfg), tokenizer, sft, rows, metrics_sink=sink)

    train_resuming(trainer_for(4))
    assert logged_steps == [1, 2, 3, 4]
    logged_steps.clear()
    resumed = trainer_for(6)
    train_resuming(resumed)
    assert resumed.state.global_step == 6
    assert logged_steps == [5, 6]  # the second run trained only the steps the first had not


def test_pairwise_loss_matches_hand_computation():
    chosen, rejected = torch.tensor([2.0, 0.5]), torch.tensor([1.0, 1.5])
    import math

    expected = -(math.log(1 / (1 + math.exp(-(1.0 - 0.25)))) + math.log(1 / (1 + math.exp(-(-1.0 - 0.25))))) / 2
    expected += 0.1 * ((3.0**2) + (2.0**2)) / 2
    assert pairwise_reward_loss(chosen, rejected, margin=0.25, center_coef=0.1).item() == pytest.approx(expected)


def test_reward_model_separates_a_separable_preference_set(tiny_rm_dir, tmp_path):
    cfg = ModelConfig(name_or_path=tiny_rm_dir)
    tokenizer = load_tokenizer(cfg, padding_side="right")
    good = ["great", "wonderful", "fun", "loved", "good", "nice", "happy"]
    bad = ["awful", "terrible", "boring", "dull", "bad", "worst", "sad"]
    pairs = [
        {
            "prompt": "the movie was ",
            "chosen": f"{good[i % 7]} and {good[(i + 3) % 7]}",
            "rejected": f"{bad[(i * 5) % 7]} and {bad[(i + 1) % 7]}",
        }
        for i in range(140)
    ]
    rows = Dataset.from_list(pairs)
    train, held_out = rows.select(range(100)), rows.select(range(100, 140))
    reward_cfg = RewardConfig(
        output_dir=str(tmp_path),
        max_steps=60,
        learning_rate=2e-3,
        per_device_batch_size=16,
        save_steps=1000,
        logging_steps=20,
        max_length=32,
    )
    trainer = RewardTrainer(load_sequence_scorer(cfg), tokenizer, reward_cfg, train, held_out)
    before = trainer.evaluate()["eval_accuracy"]
    train_resuming(trainer)
    metrics = trainer.evaluate()
    assert metrics["eval_accuracy"] > 0.9, (before, metrics)
    assert metrics["eval_margin"] > 0


def test_sft_stops_at_a_nan_loss_before_the_optimizer_applies_it(tiny_lm_dir, tmp_path):
    cfg = ModelConfig(name_or_path=tiny_lm_dir)
    tokenizer = load_tokenizer(cfg, padding_side="right")
    rows = Dataset.from_list([{"text": s} for s in SENTENCES * 8])
    sft = SFTConfig(output_dir=str(tmp_path), max_steps=4, per_device_batch_size=4, save_steps=2, max_length=32)
    trainer = SFTTrainer(load_causal_lm(cfg), tokenizer, sft, rows)
    original_loss = trainer.compute_loss

    def loss_nan_at_step_3(model, inputs, **kwargs):
        loss = original_loss(model, inputs, **kwargs)
        return loss * float("nan") if trainer.state.global_step == 2 else loss

    trainer.compute_loss = loss_nan_at_step_3
    with pytest.raises(NonFiniteError, match="at step 3"):
        train_resuming(trainer)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())  # the NaN step was never applied
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["checkpoint-2"]


def test_resume_ignores_and_removes_a_checkpoint_cut_short_by_a_kill(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"partial")
        if complete:
            (folder / COMPLETE_MARKER).write_text(str(step))
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert last_complete_checkpoint(tmp_path / "missing") is None
