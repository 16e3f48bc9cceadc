"""Rollouts: sample responses, score them, and record log-probs, reference log-probs and values.

Causal policies read the prompt and the response as one left-padded sequence; encoder-decoders read the prompt in
the encoder and the response in the decoder. Both give log-probs and values in one [B, R] layout, so everything
after the rollout (`ppo/core.py`) is the same for either kind.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf_lib.models.decoding import fast_sampling
from rlhf_lib.models.lm_head import recording_last_hidden_states
from rlhf_lib.models.value_head import ModelWithValueHead
from rlhf_lib.ppo.core import logprobs_of_labels
from rlhf_lib.sampling import Sampling


@dataclass
class Rollout:
    """One batch of episodes; response-aligned tensors are [B, R]."""

    input_ids: torch.Tensor
    """Causal: the left-padded prompt followed by the response (and padding after EOS), [B, P + R].
    Encoder-decoder: the right-padded prompt the encoder reads, [B, P]."""
    attention_mask: torch.Tensor
    """Mask of `input_ids`: prompt padding is 0, every response position 1 (padding after EOS is masked via
    `mask`)."""
    response_ids: torch.Tensor
    """The sampled responses, [B, R] (for a causal policy, a view of the end of `input_ids`)."""
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


@dataclass
class Sampled:
    """What `sample_responses` returns, laid out as in `Rollout`."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_ids: torch.Tensor
    recorded: tuple[torch.Tensor, torch.Tensor] | None
    """(log-probs, values) of the sampled tokens read off generation, when asked for."""


def sample_responses(
    model: ModelWithValueHead,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_prompt_length: int,
    sampling: Sampling,
    record_policy: bool = False,
) -> Sampled:
    """Generate with the KV cache.

    With `record_policy`, `recorded` is the (log-probs, values) of the sampled tokens, read off the
    generation's own forward passes (raw logits / temperature; the value head on the LM head's input):
    the same numbers `response_logprobs_and_values` computes, without another forward of the policy.
    """
    device = next(model.parameters()).device
    tokenizer.truncation_side = "left"  # keep the end of a long prompt, next to the response
    # Left padding puts every causal prompt's end next to its response; an encoder reads its prompt from
    # position 0, as it was trained (BART's positions are absolute).
    encoded = tokenizer(
        prompts,
        return_tensors="pt",
        padding=True,
        truncation=True,
        max_length=max_prompt_length,
        padding_side="right" if model.is_encoder_decoder else "left",
    ).to(device)
    recording = recording_last_hidden_states(model.pretrained_model) if record_policy else nullcontext()
    with fast_sampling(model.pretrained_model), recording as hidden:
        output = model.generate(
            **encoded, **sampling.generate_kwargs(return_dict_in_generate=True, output_logits=record_policy)
        )
    if model.is_encoder_decoder:  # the decoder's output opens with its start token
        input_ids, attention_mask, response_ids = (
            encoded["input_ids"],
            encoded["attention_mask"],
            output.sequences[:, 1:],
        )
    else:
        input_ids, prompt_width = output.sequences, encoded["input_ids"].shape[1]
        response_ids = input_ids[:, prompt_width:]
        filled = torch.ones_like(response_ids)
        attention_mask = torch.cat([encoded["attention_mask"], filled], 1)
    recorded = None
    if record_policy:
        width = response_ids.shape[1]
        if not len(output.logits) == len(hidden) == width:
            raise RuntimeError(
                f"generation recorded {len(output.logits)} logits and {len(hidden)} hidden states for {width} tokens"
            )
        logits = at_temperature(torch.stack(output.logits, 1), sampling.temperature)
        recorded = logprobs_of_labels(logits, response_ids), model.v_head(torch.stack(hidden, 1))
    return Sampled(input_ids, attention_mask, response_ids, recorded)


def at_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / temperature, without a [B, R, V] copy at temperature 1."""
    return logits if temperature == 1.0 else logits / temperature


def response_logprobs_and_values(
    model: ModelWithValueHead,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_ids: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward of the shared trunk: (log-probs, values, logits) at the response positions.

    `model` may be a DistributedDataParallel wrapper, which keeps the policy (and its attributes) in `.module`.
    """
    policy = getattr(model, "module", model)
    if policy.is_encoder_decoder:
        logits, values = model(input_ids, attention_mask, decoder_inputs(policy.config, response_ids))
    else:
        logits, values = model(
            input_ids, attention_mask, logits_to_keep=predicting_positions(input_ids, response_ids.shape[1])
        )
    logits = at_temperature(logits, temperature)
    return logprobs_of_labels(logits, response_ids), values, logits


def predicting_positions(input_ids: torch.Tensor, response_width: int) -> torch.Tensor:
    """The R positions whose logits predict the response tokens (position t predicts token t + 1).

    An index tensor rather than `R + 1` then a slice: the head skips the last position, and backward
    skips zero-padding the gradient of a [B, R + 1, V] slice.
    """
    width = input_ids.shape[1]
    return torch.arange(width - response_width - 1, width - 1, device=input_ids.device)


def decoder_inputs(config, response_ids: torch.Tensor) -> torch.Tensor:
    """Teacher forcing: the decoder reads its start token then the response but its last token."""
    start = torch.full_like(response_ids[:, :1], config.decoder_start_token_id)
    return torch.cat([start, response_ids[:, :-1]], 1)


def response_logits(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_ids: torch.Tensor
) -> torch.Tensor:
    """Logits of a plain LM (either kind, laid out as in `Rollout`) at the positions predicting each response token."""
    if model.config.is_encoder_decoder:
        decoder_input_ids = decoder_inputs(model.config, response_ids)
        return model(
            input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids, use_cache=False
        ).logits
    return model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0),
        logits_to_keep=predicting_positions(input_ids, response_ids.shape[1]),
        use_cache=False,
    ).logits


def reference_logprobs(
    policy: ModelWithValueHead,
    ref_model: PreTrainedModel | None,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_ids: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Log-probs under the frozen reference: the LoRA policy with adapters off, or a separate copy."""
    context = policy.reference_mode() if ref_model is None else nullcontext()
    model = policy.pretrained_model if ref_model is None else ref_model
    with context:
        logits = response_logits(model, input_ids, attention_mask, response_ids)
    return logprobs_of_labels(at_temperature(logits, temperature), response_ids)
