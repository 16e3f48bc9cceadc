"""PPO numerics as plain functions: tensors in, tensors out, each testable against a hand computation.

Shapes: B episodes, R response positions. `mask` is 1 on the tokens the policy generated (up to and including
the first EOS) and 0 elsewhere: the padding after EOS and, in tool-use episodes, the tool's answers between the
policy's turns, so a mask may have holes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def logprobs_of_labels(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) under softmax(logits): [B, R, V] x [B, R] -> [B, R]."""
    # logsumexp + gather avoids materialising a second [B, R, V] tensor of log-probs.
    logits = logits.float()
    picked = torch.gather(logits, 2, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) at each position: [B, R, V] -> [B, R]."""
    logits = logits.float()
    probs = F.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


def response_mask_until_eos(responses: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 for each token up to and including the first EOS, 0 after it (all 1 when there is no EOS)."""
    is_eos = (responses == eos_token_id).long()
    eos_seen_before = is_eos.cumsum(1) - is_eos  # EOS tokens strictly before each position
    return (eos_seen_before == 0).long()


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(
    values: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    sum_across: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """(x - mean) / std over the masked entries; masked-out entries are returned as 0.

    `sum_across` sums a tensor over the processes of a data-parallel run, so that each process whitens its shard
    with the mean and the (unbiased) variance of the whole batch.
    """
    total = sum_across or (lambda tensor: tensor)
    mask = mask.to(values.dtype)
    count = total(mask.sum())
    mean = total((values * mask).sum()) / count.clamp(min=1)
    variance = total(((values - mean) ** 2 * mask).sum()) / count.clamp(min=1)
    if count > 1:
        variance = variance * count / (count - 1)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token KL(policy || reference) estimate from log-probs of the sampled tokens.

    k1 = log p - log p_ref (unbiased, noisy, can be negative);
    k3 = (r - 1) - log r with r = p_ref / p (unbiased, never negative; Schulman 2020).
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; use 'k1' or 'k3'")


def last_policy_position(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last 1 in `mask` (0 for a row with none): where an episode's score lands."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    return (positions * (mask > 0)).amax(1)


def kl_penalised_rewards(scores: torch.Tensor, kl: torch.Tensor, kl_coef: float, mask: torch.Tensor) -> torch.Tensor:
    """Per-token rewards: -kl_coef * KL on every policy token, plus the score on the last one."""
    rewards = -kl_coef * kl * mask
    rewards[torch.arange(len(scores), device=scores.device), last_policy_position(mask)] += scores.to(rewards.dtype)
    return rewards


def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the policy's tokens, in order; returns (advantages, returns).

    Tokens outside the mask (tool answers, padding) are not steps of the episode: each policy token
    bootstraps from the next policy token's value, past the last one the value is 0, and masked positions
    get advantage 0. The policy tokens are moved to the front of each row (a stable sort keeps their order),
    GAE runs over that contiguous prefix, and the results go back to their positions.
    """
    order = torch.argsort((mask <= 0).int(), dim=1, stable=True)
    mask = mask.gather(1, order)
    advantages, returns = _gae_over_prefix(rewards.gather(1, order), values.gather(1, order), mask, gamma, lam)
    return torch.empty_like(advantages).scatter(1, order, advantages), torch.empty_like(returns).scatter(
        1, order, returns
    )


def _gae_over_prefix(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    rewards, values = rewards * mask, values * mask
    length = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, advantages + values


def clipped_policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cliprange: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip surrogate: mean over tokens of max(-A r, -A clip(r, 1-eps, 1+eps))."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    stats = {
        "clipfrac": masked_mean((clipped > unclipped).float(), mask),
        "approxkl": 0.5 * masked_mean(log_ratio**2, mask),
        "ratio": masked_mean(ratio, mask),
    }
    return loss, stats


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange_value: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """0.5 * mean of max((V - R)^2, (V_clipped - R)^2), V_clipped kept within +-eps of the old value."""
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_error, clipped_error), mask)
    clipfrac = masked_mean((clipped_error > unclipped_error).float(), mask)
    return loss, clipfrac
