"""Sampling: the inverse-CDF draw follows softmax(logits / T) after top-k / top-p, checked by counting
against probabilities computed by hand; and PPO samples from the untruncated distribution by default."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_lib.config import ModelConfig, PPOConfig
from rlhf_lib.models.loading import load_causal_lm, load_tokenizer
from rlhf_lib.models.value_head import AutoModelForCausalLMWithValueHead
from rlhf_lib.ppo.rollout import sample_responses
from rlhf_lib.ppo.trainer import PPOTrainer
from rlhf_lib.sampling import InverseCDFSampler, Sampling

LOGITS = [2.0, 1.0, 0.5, 0.0, -1.0, -3.0]
DRAWS = 40_000


def _softmax(logits: list[float]) -> list[float]:
    exps = [math.exp(x) for x in logits]
    return [e / sum(exps) for e in exps]


def _draw(sampling: Sampling, logits: list[float]) -> torch.Tensor:
    """Token counts over DRAWS rows, each row one independent draw through the processors."""
    scores = torch.tensor(logits).repeat(DRAWS, 1)
    out = sampling.logits_processor(torch.zeros(DRAWS, 1, dtype=torch.long), scores)
    tokens = out.argmax(-1)
    assert torch.equal(out.max(-1).values, torch.zeros(DRAWS)), "the drawn token must be the only finite score"
    return torch.bincount(tokens, minlength=len(logits)).double()


def _assert_frequencies(counts: torch.Tensor, expected: list[float]) -> None:
    for token, (count, p) in enumerate(zip(counts.tolist(), expected, strict=True)):
        sigma = math.sqrt(DRAWS * p * (1 - p))
        assert abs(count - DRAWS * p) <= 5 * sigma + 1e-9, f"token {token}: {count} draws, expected {DRAWS * p:.0f}"


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_draws_follow_the_softmax_at_the_temperature(temperature):
    torch.manual_seed(0)
    sampling = Sampling.create(temperature, top_k=0, top_p=1.0, max_new_tokens=1, pad_token_id=0, eos_token_id=1)
    counts = _draw(sampling, LOGITS)
    _assert_frequencies(counts, _softmax([x / temperature for x in LOGITS]))


def test_top_k_and_top_p_renormalise_over_the_kept_tokens():
    torch.manual_seed(0)
    top_k = Sampling.create(1.0, top_k=3, top_p=1.0, max_new_tokens=1, pad_token_id=0, eos_token_id=1)
    kept = _softmax(LOGITS[:3])
    _assert_frequencies(_draw(top_k, LOGITS), kept + [0.0] * 3)
    # p = [0.563, 0.207, 0.126, ...]: the nucleus of mass 0.7 is the two most likely tokens.
    top_p = Sampling.create(1.0, top_k=0, top_p=0.7, max_new_tokens=1, pad_token_id=0, eos_token_id=1)
    _assert_frequencies(_draw(top_p, LOGITS), _softmax(LOGITS[:2]) + [0.0] * 4)


def test_a_token_of_probability_zero_is_never_drawn_and_a_certain_one_always():
    torch.manual_seed(0)
    scores = torch.tensor([[-torch.inf, 0.0, -torch.inf], [0.0, -torch.inf, -torch.inf]]).repeat(5000, 1)
    tokens = InverseCDFSampler()(torch.zeros(len(scores), 1, dtype=torch.long), scores).argmax(-1)
    assert torch.equal(tokens, torch.tensor([1, 0]).repeat(5000))


def test_ppo_samples_from_the_whole_vocabulary_when_top_k_is_0(tiny_lm_dir, tmp_path, default_precision):
    # transformers fills an unset top_k with 50; the near-uniform tiny model shows it: 256 first tokens
    # drawn from ~300 equally likely ones have far more than 50 distinct values.
    cfg = ModelConfig(name_or_path=tiny_lm_dir)
    tokenizer = load_tokenizer(cfg)
    model = AutoModelForCausalLMWithValueHead(load_causal_lm(cfg))
    ppo = PPOConfig(output_dir=str(tmp_path), batch_size=4, max_new_tokens=1, top_k=0)
    trainer = PPOTrainer(ppo, model, tokenizer, ["the movie was"], lambda prompts, responses: [0.0] * len(prompts))
    with torch.no_grad():
        sampled = sample_responses(trainer.policy, tokenizer, ["the movie was"] * 256, 16, trainer.sampling)
    first_tokens = sampled.response_ids[:, 0]
    assert len(tokenizer) > 200
    assert first_tokens.unique().numel() > 80
