"""PPO behaviour on a tiny model: learning, bounded KL, reward models, checkpoints and exact resume."""

from __future__ import annotations

import pytest
import torch

from rlhf_lib.config import LoraSettings, ModelConfig, PPOConfig
from rlhf_lib.errors import NonFiniteError, RewardUnavailable
from rlhf_lib.models.loading import load_causal_lm, load_sequence_scorer, load_tokenizer
from rlhf_lib.models.value_head import AutoModelForCausalLMWithValueHead
from rlhf_lib.ppo.checkpoint import list_checkpoints
from rlhf_lib.ppo.trainer import PPOTrainer
from rlhf_lib.rewards import RewardModelScorer, RewardSource, WeightedReward

# Every test here runs with `bf16: null` resolved to fp32 and to bf16 (autocast, bf16 frozen weights).
pytestmark = pytest.mark.usefixtures("default_precision")

PROMPTS = ["the movie was", "i loved this", "a terrible film", "the worst movie", "the acting", "this story"]


def _target_share_reward(tokenizer, words=(" great", " good", " fun", " nice", " happy", " wonderful", " loved")):
    """reward = share of response tokens that are one of the target words' tokens."""
    targets = set()
    for word in words:
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, f"{word!r} must be a single token"
        targets.add(ids[0])

    def reward(prompts: list[str], responses: list[str]) -> list[float]:
        shares = []
        for response in responses:
            ids = tokenizer(response, add_special_tokens=False)["input_ids"]
            shares.append(sum(token in targets for token in ids) / max(len(ids), 1))
        return shares

    return reward


def _trainer(model_dir, out_dir, lora=None, eval_prompts=None, **overrides) -> PPOTrainer:
    cfg = ModelConfig(name_or_path=model_dir, lora=lora)
    tokenizer = load_tokenizer(cfg)
    torch.manual_seed(overrides.get("seed", 0))  # the value head's init, so a test does not hang on test order
    model = AutoModelForCausalLMWithValueHead(load_causal_lm(cfg))
    settings = dict(
        output_dir=str(out_dir),
        batch_size=12,
        num_mini_batches=2,
        ppo_epochs=2,
        total_steps=4,
        max_new_tokens=8,
        learning_rate=3e-3,
        kl_coef=0.05,
        save_steps=100,
        seed=0,
    )
    ppo = PPOConfig(**(settings | overrides))
    reward = _target_share_reward(tokenizer)
    judges = {"share": reward} if eval_prompts else None
    return PPOTrainer(ppo, model, tokenizer, PROMPTS, reward, eval_prompts=eval_prompts, judges=judges)


@pytest.mark.parametrize("lora", [None, LoraSettings(r=8, alpha=32)], ids=["full", "lora"])
def test_ppo_raises_the_reward_with_finite_bounded_kl(tiny_lm_dir, tmp_path, lora, default_precision):
    # Measured on the tiny model (seeds 0-2): full fine-tuning, sampling from the whole vocabulary, 0.01 ->
    # 0.18-0.46 in 60 steps in fp32, 0.015 -> 0.079-0.236 in bf16 (AMD EPYC, bf16 without AMX). LoRA on a
    # random base barely moves the target words' share when it samples from all ~400 tokens (0.01 -> 0.02),
    # so it samples from the top 50, as the old default did: seed 0 0.033 -> 0.076 (seed 1 stays near 0.01,
    # seed 2 reaches 0.072).
    trainer = _trainer(
        tiny_lm_dir,
        tmp_path,
        lora=lora,
        total_steps=60,
        learning_rate=3e-3 if lora is None else 5e-2,
        kl_estimator="k3",
        top_k=0 if lora is None else 50,
    )
    history = trainer.train()
    first = sum(m["objective/scores"] for m in history[:10]) / 10
    last = sum(m["objective/scores"] for m in history[-10:]) / 10
    full_gain = 0.1 if default_precision == "fp32" else 0.05
    assert last > 2 * first and last > first + (full_gain if lora is None else 0.025), (first, last)
    kls = [m["objective/kl"] for m in history]
    assert all(torch.isfinite(torch.tensor(kls))) and max(kls) < 50
    for key in (
        "objective/entropy",
        "objective/rlhf_reward",
        "policy/approxkl_avg",
        "policy/clipfrac_avg",
        "loss/policy_avg",
        "loss/value_avg",
        "val/ratio_avg",
        "eps",
        "response_length",
    ):
        assert key in history[-1]
    trainer.save_policy(tmp_path / "policy")
    reloaded = load_causal_lm(ModelConfig(name_or_path=str(tmp_path / "policy")))
    assert not hasattr(reloaded, "peft_config")


def test_reward_model_with_its_own_tokenizer_scores_decoded_text(tiny_lm_dir, tiny_rm_dir, tmp_path):
    rm_cfg = ModelConfig(name_or_path=tiny_rm_dir)
    scorer = RewardModelScorer(load_sequence_scorer(rm_cfg), load_tokenizer(rm_cfg, padding_side="right"))
    scores = scorer(["the movie was", "a"], [" great", " terrible film with a boring plot"])
    alone = scorer(["a"], [" terrible film with a boring plot"])
    assert len(scores) == 2 and scores[1] == pytest.approx(alone[0], abs=1e-5)  # padding does not leak in
    trainer = _trainer(tiny_lm_dir, tmp_path, total_steps=1)
    trainer.reward_fn = scorer
    metrics = trainer.step(trainer.prompts_for_step(0))
    assert torch.isfinite(torch.tensor(metrics["objective/scores"]))


def test_resume_continues_the_step_count_and_gives_the_same_next_update(tiny_lm_dir, tmp_path):
    straight = _trainer(tiny_lm_dir, tmp_path / "a", total_steps=3, save_steps=2)
    history = straight.train()
    assert [p.name for p in list_checkpoints(tmp_path / "a" / "checkpoints")] == ["checkpoint-2", "checkpoint-3"]

    resumed = _trainer(tiny_lm_dir, tmp_path / "b", total_steps=3, save_steps=2)
    # put checkpoint-2 of the first run where the second looks, as a crashed run would have left it
    import shutil

    shutil.copytree(tmp_path / "a" / "checkpoints" / "checkpoint-2", tmp_path / "b" / "checkpoints" / "checkpoint-2")
    resumed_history = resumed.train()
    assert resumed.global_step == 3 and len(resumed_history) == 1  # only step 3 ran
    assert resumed_history[0]["objective/scores"] == pytest.approx(history[2]["objective/scores"])
    assert resumed_history[0]["loss/policy_avg"] == pytest.approx(history[2]["loss/policy_avg"], abs=1e-6)
    for (name, a), (_, b) in zip(straight.policy.named_parameters(), resumed.policy.named_parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_checkpoints_keep_the_last_two_and_hold_every_part(tiny_lm_dir, tmp_path):
    trainer = _trainer(tiny_lm_dir, tmp_path, lora=LoraSettings(r=4), total_steps=3, save_steps=1)
    trainer.train()
    kept = list_checkpoints(tmp_path / "checkpoints")
    assert [p.name for p in kept] == ["checkpoint-2", "checkpoint-3"]
    files = {p.name for p in kept[-1].iterdir()}
    assert files == {"trainable.safetensors", "optimizer.pt", "trainer_state.json"}
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]  # no staging left


def _nan_at_step(reward_fn, trainer: PPOTrainer, bad_step: int):
    """The trainer's reward, except NaN for every response at PPO step `bad_step` (1-based)."""

    def reward(prompts, responses):
        scores = reward_fn(prompts, responses)
        return [float("nan")] * len(scores) if trainer.global_step + 1 == bad_step else scores

    return reward


def test_non_finite_reward_stops_with_the_step_named_and_keeps_the_last_checkpoint(tiny_lm_dir, tmp_path):
    trainer = _trainer(tiny_lm_dir, tmp_path, total_steps=4, save_steps=2)
    trainer.reward_fn = _nan_at_step(trainer.reward_fn, trainer, bad_step=3)
    with pytest.raises(NonFiniteError, match="reward scores at PPO step 3"):
        trainer.train()
    checkpoints = list_checkpoints(tmp_path / "checkpoints")
    assert [p.name for p in checkpoints] == ["checkpoint-2"]  # the good one, untouched by the failed step
    resumed = _trainer(tiny_lm_dir, tmp_path, total_steps=4, save_steps=2)
    resumed.load_checkpoint(checkpoints[-1])
    assert all(torch.isfinite(p).all() for p in resumed.policy.parameters())


def test_skip_option_skips_non_finite_batches_and_counts_them(tiny_lm_dir, tmp_path):
    trainer = _trainer(tiny_lm_dir, tmp_path, total_steps=4, save_steps=4, skip_nonfinite_batches=True)
    trainer.reward_fn = _nan_at_step(trainer.reward_fn, trainer, bad_step=2)
    before = {name: p.detach().clone() for name, p in trainer.policy.named_parameters()}
    history = trainer.train()
    assert [m["step"] for m in history] == [1, 3, 4]
    assert trainer.skipped_batches == 1 and history[-1]["skipped_batches"] == 1
    assert all(torch.isfinite(p).all() for p in trainer.policy.parameters())
    assert any(not torch.equal(before[name], p) for name, p in trainer.policy.named_parameters())


def test_data_position_is_a_seeded_permutation_per_pass(tiny_lm_dir, tmp_path):
    trainer = _trainer(tiny_lm_dir, tmp_path, batch_size=4, num_mini_batches=1)
    first_pass = trainer.prompts_for_step(0) + trainer.prompts_for_step(1)[:2]
    assert sorted(first_pass) == sorted(PROMPTS)
    assert trainer.prompts_for_step(1) == _trainer(
        tiny_lm_dir, tmp_path, batch_size=4, num_mini_batches=1
    ).prompts_for_step(1)


def test_missing_eos_penalty_hits_only_responses_without_eos(tiny_lm_dir, tmp_path):
    trainer = _trainer(tiny_lm_dir, tmp_path, max_new_tokens=3, missing_eos_penalty=1.5)
    trainer.reward_fn = lambda prompts, responses: [0.0] * len(prompts)
    batch = trainer.rollout(trainer.prompts_for_step(0))
    expected = torch.where(batch.contains_eos, 0.0, -1.5)
    assert torch.equal(batch.scores, expected)
    # the tokens after the first EOS are masked out of the response
    eos = trainer.tokenizer.eos_token_id
    responses = batch.input_ids[:, -batch.response_length :]
    for row, mask in zip(responses, batch.mask, strict=True):
        kept = row[mask.bool()].tolist()
        assert eos not in kept[:-1]


def test_weighted_reward_logs_each_source_and_trains_on_their_sum(tiny_lm_dir, tiny_rm_dir, tmp_path):
    rm_cfg = ModelConfig(name_or_path=tiny_rm_dir)
    scorer = RewardModelScorer(load_sequence_scorer(rm_cfg), load_tokenizer(rm_cfg, padding_side="right"))
    trainer = _trainer(tiny_lm_dir, tmp_path, total_steps=1)
    share = trainer.reward_fn
    trainer.reward_fn = WeightedReward([RewardSource("model", scorer, 0.5), RewardSource("share", share, 2.0)])
    metrics = trainer.step(trainer.prompts_for_step(0))
    assert set(metrics) >= {"reward/model", "reward/share"}
    # The mean of a weighted sum is the weighted sum of the means.
    expected = 0.5 * metrics["reward/model"] + 2.0 * metrics["reward/share"]
    assert metrics["objective/scores"] == pytest.approx(expected, abs=1e-5)


def test_held_out_evaluation_reports_reward_judges_and_kl_without_changing_training(tiny_lm_dir, tmp_path):
    plain = _trainer(tiny_lm_dir, tmp_path / "plain", total_steps=2)
    plain_history = plain.train()
    held_out = ["the movie was", "i loved this"]
    evaluated = _trainer(tiny_lm_dir, tmp_path / "evaluated", total_steps=2, eval_steps=1, eval_prompts=held_out)
    history = evaluated.train()
    for step in history:
        assert set(step) >= {"held_out/reward", "held_out/kl", "held_out/judge/share"}
        assert step["held_out/judge/share"] == pytest.approx(step["held_out/reward"])  # same function, same samples
    # Sampling for the evaluation leaves the training's random stream alone: the same updates as without it.
    assert history[-1]["loss/policy_avg"] == pytest.approx(plain_history[-1]["loss/policy_avg"], abs=1e-6)
    assert history[-1]["objective/scores"] == pytest.approx(plain_history[-1]["objective/scores"])
    with pytest.raises(ValueError, match="no eval_prompts"):
        _trainer(tiny_lm_dir, tmp_path / "none", eval_steps=1)


class _RatedLater:
    """A reward with no scores at step `missing_step` (1-based) of `trainer`, as people who did not rate in time;
    remembers every batch of responses it was asked about."""

    def __init__(self, reward_fn, missing_step: int, skip: bool) -> None:
        self.reward_fn, self.missing_step, self.skip = reward_fn, missing_step, skip
        self.trainer: PPOTrainer | None = None
        self.asked: list[list[str]] = []

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        self.asked.append(list(responses))
        if self.trainer.global_step + 1 == self.missing_step:
            raise RewardUnavailable("no ratings within 1 s", skip=self.skip)
        return self.reward_fn(prompts, responses)


def test_a_batch_without_a_reward_is_skipped_when_asked(tiny_lm_dir, tmp_path):
    trainer = _trainer(tiny_lm_dir, tmp_path, total_steps=3)
    trainer.reward_fn = rated = _RatedLater(trainer.reward_fn, missing_step=2, skip=True)
    rated.trainer = trainer
    history = trainer.train()
    assert [metrics["step"] for metrics in history] == [1, 3] and trainer.skipped_batches == 1
    assert history[-1]["skipped_batches"] == 1


def test_a_batch_without_a_reward_stops_with_a_checkpoint_that_resamples_it(tiny_lm_dir, tmp_path):
    stopped = _trainer(tiny_lm_dir, tmp_path, total_steps=3)
    stopped.reward_fn = rated = _RatedLater(stopped.reward_fn, missing_step=2, skip=False)
    rated.trainer = stopped
    with pytest.raises(RewardUnavailable, match=r"PPO step 2: no ratings within 1 s; resume from .*checkpoint-1"):
        stopped.train()
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["checkpoint-1"]

    resumed = _trainer(tiny_lm_dir, tmp_path, total_steps=3)
    resumed.reward_fn = again = _RatedLater(resumed.reward_fn, missing_step=0, skip=False)
    again.trainer = resumed
    history = resumed.train()
    assert [metrics["step"] for metrics in history] == [2, 3]
    assert again.asked[0] == rated.asked[1]  # the batch nobody rated is the one the rerun asks about first
