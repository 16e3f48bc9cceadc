"""PPO numerics against independent, loop-by-loop computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rlhf_lib.ppo.core import (
    clipped_policy_loss,
    clipped_value_loss,
    compute_gae,
    entropy_from_logits,
    kl_penalised_rewards,
    kl_per_token,
    logprobs_of_labels,
    masked_mean,
    masked_whiten,
    response_mask_until_eos,
)
from rlhf_lib.ppo.kl_control import KLController


def test_logprobs_match_log_softmax_of_full_logits():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11) * 4
    labels = torch.randint(0, 11, (3, 5))
    expected = torch.tensor(
        [[F.log_softmax(logits[b, t], -1)[labels[b, t]].item() for t in range(5)] for b in range(3)]
    )
    assert torch.allclose(logprobs_of_labels(logits, labels), expected, atol=1e-5)


def test_entropy_matches_definition():
    logits = torch.randn(2, 3, 7)
    p = logits.softmax(-1)
    assert torch.allclose(entropy_from_logits(logits), -(p * p.log()).sum(-1), atol=1e-5)


def test_response_mask_keeps_first_eos_and_drops_the_rest():
    eos = 9
    responses = torch.tensor([[1, 2, 9, 9, 9], [1, 9, 3, 9, 4], [1, 2, 3, 4, 5], [9, 9, 9, 9, 9]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    assert torch.equal(response_mask_until_eos(responses, eos), expected)


def test_kl_estimators():
    logp = torch.tensor([-1.0, -2.0, -0.5])
    ref = torch.tensor([-1.5, -1.0, -0.5])
    k1 = kl_per_token(logp, ref, "k1")
    k3 = kl_per_token(logp, ref, "k3")
    for i in range(3):
        assert k1[i].item() == pytest.approx(logp[i].item() - ref[i].item())
        r = math.exp(ref[i].item() - logp[i].item())
        assert k3[i].item() == pytest.approx((r - 1) - math.log(r), abs=1e-6)
    assert (k3 >= 0).all()
    with pytest.raises(ValueError, match="k2"):
        kl_per_token(logp, ref, "k2")


def test_k1_and_k3_estimate_the_true_kl_from_samples():
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(6), -1)
    q = torch.softmax(torch.randn(6), -1)
    true_kl = (p * (p / q).log()).sum().item()
    samples = torch.multinomial(p, 200_000, replacement=True)
    logp, logq = p.log()[samples], q.log()[samples]
    assert kl_per_token(logp, logq, "k1").mean().item() == pytest.approx(true_kl, abs=0.01)
    assert kl_per_token(logp, logq, "k3").mean().item() == pytest.approx(true_kl, abs=0.01)


def test_kl_penalised_rewards_put_the_score_on_the_last_real_token():
    kl = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]])
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    rewards = kl_penalised_rewards(torch.tensor([2.0, -1.0]), kl, 0.5, mask)
    expected = torch.tensor([[-0.05, -0.1 + 2.0, 0, 0], [-0.25, -0.3, -0.35, -0.4 - 1.0]])
    assert torch.allclose(rewards, expected)


def _gae_reference(rewards, values, length, gamma, lam):
    advantages = [0.0] * length
    running = 0.0
    for t in reversed(range(length)):
        next_value = values[t + 1] if t + 1 < length else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        advantages[t] = running
    return advantages


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0)])
def test_gae_matches_a_plain_reverse_loop_per_sequence(gamma, lam):
    torch.manual_seed(1)
    rewards, values = torch.randn(3, 6), torch.randn(3, 6)
    lengths = [6, 4, 1]
    mask = torch.tensor([[1] * n + [0] * (6 - n) for n in lengths])
    advantages, returns = compute_gae(rewards, values, mask, gamma, lam)
    for b, n in enumerate(lengths):
        expected = _gae_reference(rewards[b].tolist(), values[b].tolist(), n, gamma, lam)
        assert advantages[b, :n].tolist() == pytest.approx(expected, abs=1e-5)
        assert advantages[b, n:].abs().sum() == 0  # padding gets nothing
        assert returns[b, :n].tolist() == pytest.approx(
            [a + v for a, v in zip(expected, values[b, :n].tolist(), strict=True)], abs=1e-5
        )


def test_a_mask_with_holes_scores_the_last_policy_token_and_runs_gae_over_policy_tokens_only():
    """Tool-use episodes: the tool's answers sit between the policy's turns with mask 0."""
    torch.manual_seed(2)
    mask = torch.tensor(
        [
            [1, 1, 0, 0, 1, 1, 0, 0],  # a call, the tool's answer, the final answer, padding
            [1, 0, 1, 0, 0, 1, 1, 1],  # two calls
            [1, 1, 1, 1, 0, 0, 0, 0],  # no call
            [0, 0, 0, 0, 0, 0, 0, 0],  # nothing generated
        ]
    )
    kl, values = torch.rand(4, 8), torch.randn(4, 8)
    rewards = kl_penalised_rewards(torch.tensor([1.0, 2.0, 3.0, 4.0]), kl, 0.1, mask)
    for b, last in enumerate([5, 7, 3, 0]):
        expected = -0.1 * kl[b] * mask[b]
        expected[last] += b + 1.0
        assert torch.allclose(rewards[b], expected)

    for gamma, lam in [(1.0, 0.95), (0.9, 0.5)]:
        advantages, returns = compute_gae(rewards, values, mask, gamma, lam)
        for b in range(4):
            policy = [t for t in range(8) if mask[b, t]]
            expected = _gae_reference(
                [rewards[b, t].item() for t in policy], [values[b, t].item() for t in policy], len(policy), gamma, lam
            )
            assert [advantages[b, t].item() for t in policy] == pytest.approx(expected, abs=1e-5)
            assert [returns[b, t].item() for t in policy] == pytest.approx(
                [a + values[b, t].item() for a, t in zip(expected, policy, strict=True)], abs=1e-5
            )
            holes = [t for t in range(8) if not mask[b, t]]
            assert advantages[b, holes].abs().sum() == 0 and returns[b, holes].abs().sum() == 0


def test_masked_whiten_ignores_padding():
    values = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    real = torch.tensor([1.0, 2.0, 3.0, 4.0])
    expected = (real - real.mean()) / real.std(unbiased=True)
    whitened = masked_whiten(values, mask)
    assert torch.allclose(whitened[:, :2].flatten(), expected, atol=1e-4)
    assert whitened[:, 2].abs().sum() == 0
    assert masked_mean(values, mask).item() == pytest.approx(2.5)


def test_clipped_policy_loss_inside_at_and_beyond_the_clip_range():
    eps = 0.2
    old = torch.zeros(1, 4)
    ratios = torch.tensor([[1.1, 1.2, 1.5, 0.5]])
    new = ratios.log()
    advantages = torch.tensor([[1.0, 1.0, 1.0, -1.0]])
    mask = torch.ones(1, 4)
    loss, stats = clipped_policy_loss(new, old, advantages, mask, eps)
    # per token: max(-A r, -A clip(r)); A=1, r=1.5 -> clipped to 1.2; A=-1, r=0.5 -> max(0.5, 0.8) = 0.8
    per_token = [-1.1, -1.2, -1.2, 0.8]
    assert loss.item() == pytest.approx(sum(per_token) / 4, abs=1e-6)
    assert stats["clipfrac"].item() == pytest.approx(2 / 4)  # 1.5 and 0.5 are clipped, 1.2 sits on the edge
    assert stats["approxkl"].item() == pytest.approx(0.5 * (ratios.log() ** 2).mean().item(), abs=1e-6)


def test_clipped_policy_loss_ignores_masked_tokens():
    new = torch.tensor([[0.1, 5.0]])
    old = torch.zeros(1, 2)
    adv = torch.tensor([[1.0, 1000.0]])
    loss, _ = clipped_policy_loss(new, old, adv, torch.tensor([[1, 0]]), 0.2)
    assert loss.item() == pytest.approx(-math.exp(0.1), abs=1e-6)


def test_clipped_value_loss():
    old = torch.tensor([[0.0, 0.0, 0.0]])
    new = torch.tensor([[0.1, 1.0, -1.0]])
    returns = torch.tensor([[0.0, 2.0, 0.0]])
    loss, clipfrac = clipped_value_loss(new, old, returns, torch.ones(1, 3), 0.2)
    # token 2: clipped value 0.2 is further from 2.0 than 1.0 -> (1.8)^2; token 3: max(1, 0.04) = 1
    expected = 0.5 * (0.1**2 + 1.8**2 + 1.0) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert clipfrac.item() == pytest.approx(1 / 3)


def test_adaptive_kl_controller_moves_toward_target():
    ctl = KLController(0.1, target=6.0, horizon=100)
    ctl.update(current_kl=12.0, n_episodes=10)  # error clipped to +0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 10 / 100))
    ctl.update(current_kl=3.0, n_episodes=10)  # error -0.5 clipped to -0.2
    assert ctl.value == pytest.approx(0.1 * 1.02 * 0.98)
    fixed = KLController(0.1)
    fixed.update(100.0, 10)
    assert fixed.value == 0.1
