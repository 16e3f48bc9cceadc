"""Rollouts: sample responses, score them, and record log-probs, reference log-probs and values."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf_lib.models.decoding import fast_sampling
from rlhf_lib.models.lm_head import recording_last_hidden_states
from rlhf_lib.models.value_head import AutoModelForCausalLMWithValueHead
from rlhf_lib.ppo.core import logprobs_of_labels
from rlhf_lib.sampling import Sampling


@dataclass
class Rollout:
    """One batch of episodes; response-aligned tensors are [B, R]."""

    input_ids: torch.Tensor
    """Left-padded prompt followed by the response (and padding after EOS): [B, P + R]."""
    attention_mask: torch.Tensor
    """Prompt padding is 0; every response position is 1 (padding after EOS is masked via `mask`)."""
    mask: torch.Tensor
    """1 on response tokens up to and including the first EOS."""
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor
    """One scalar score per episode, after the missing-EOS penalty."""
    contains_eos: torch.Tensor
    responses: list[str]
    score_components: dict[str, float]
    """Mean score of each reward source before weighting (empty for a single-function reward)."""
    environment_stats: dict[str, float] = field(default_factory=dict)
    """Tool-use figures of a TextEnvironment rollout (empty without one)."""

    @property
    def response_length(self) -> int:
        return self.mask.shape[1]


def sample_responses(
    model: AutoModelForCausalLMWithValueHead,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_prompt_length: int,
    sampling: Sampling,
    record_policy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, int, tuple[torch.Tensor, torch.Tensor] | None]:
    """Generate with the KV cache; returns (prompt+response ids, attention mask, prompt width, recorded).

    With `record_policy`, `recorded` is the (log-probs, values) of the sampled tokens, read off the
    generation's own forward passes (raw logits / temperature; the value head on the final hidden state):
    the same numbers `response_logprobs_and_values` computes, without another forward of the policy.
    """
    device = next(model.parameters()).device
    tokenizer.truncation_side = "left"  # keep the end of a long prompt, next to the response
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, truncation=True, max_length=max_prompt_length).to(
        device
    )
    recording = recording_last_hidden_states(model.pretrained_model) if record_policy else nullcontext()
    with fast_sampling(model.pretrained_model), recording as hidden:
        output = model.generate(
            **encoded, **sampling.generate_kwargs(return_dict_in_generate=True, output_logits=record_policy)
        )
    prompt_width = encoded["input_ids"].shape[1]
    response_width = output.sequences.shape[1] - prompt_width
    attention_mask = torch.cat(
        [encoded["attention_mask"], torch.ones(len(prompts), response_width, dtype=torch.long, device=device)], 1
    )
    recorded = None
    if record_policy:
        if not len(output.logits) == len(hidden) == response_width:
            raise RuntimeError(
                f"generation recorded {len(output.logits)} logits and {len(hidden)} hidden states "
                f"for {response_width} tokens"
            )
        logits = at_temperature(torch.stack(output.logits, 1), sampling.temperature)
        logprobs = logprobs_of_labels(logits, output.sequences[:, prompt_width:])
        recorded = logprobs, model.v_head(torch.stack(hidden, 1))
    return output.sequences, attention_mask, prompt_width, recorded


def at_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / temperature, without a [B, R, V] copy at temperature 1."""
    return logits if temperature == 1.0 else logits / temperature


def response_logprobs_and_values(
    model: AutoModelForCausalLMWithValueHead,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_width: int,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward of the shared trunk: (log-probs, values, logits) at the response positions."""
    logits, values = model(input_ids, attention_mask, logits_to_keep=predicting_positions(input_ids, response_width))
    logits = at_temperature(logits, temperature)
    responses = input_ids[:, -response_width:]
    return logprobs_of_labels(logits, responses), values, logits


def predicting_positions(input_ids: torch.Tensor, response_width: int) -> torch.Tensor:
    """The R positions whose logits predict the response tokens (position t predicts token t + 1).

    An index tensor rather than `R + 1` then a slice: the head skips the last position, and backward
    skips zero-padding the gradient of a [B, R + 1, V] slice.
    """
    width = input_ids.shape[1]
    return torch.arange(width - response_width - 1, width - 1, device=input_ids.device)


def reference_logprobs(
    policy: AutoModelForCausalLMWithValueHead,
    ref_model: PreTrainedModel | None,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_width: int,
    temperature: float,
) -> torch.Tensor:
    """Log-probs under the frozen reference: the LoRA policy with adapters off, or a separate copy."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    context = policy.reference_mode() if ref_model is None else nullcontext()
    model = policy.pretrained_model if ref_model is None else ref_model
    with context:
        logits = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            logits_to_keep=predicting_positions(input_ids, response_width),
            use_cache=False,
        ).logits
    return logprobs_of_labels(at_temperature(logits, temperature), input_ids[:, -response_width:])
