"""Rollouts: sample responses, score them, and record log-probs, reference log-probs and values."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from rlhf_lib.models.lm_head import recording_last_hidden_states
from rlhf_lib.models.value_head import AutoModelForCausalLMWithValueHead
from rlhf_lib.ppo.core import logprobs_of_labels

RewardFunction = Callable[[list[str], list[str]], list[float]]
"""f(prompts, responses) -> one score per response."""


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

    @property
    def response_length(self) -> int:
        return self.mask.shape[1]


def sample_responses(
    model: AutoModelForCausalLMWithValueHead,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_prompt_length: int,
    generation_config: GenerationConfig,
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
    with recording_last_hidden_states(model.pretrained_model) if record_policy else nullcontext() as hidden:
        output = model.generate(
            **encoded, generation_config=generation_config, return_dict_in_generate=True, output_logits=record_policy
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
        logits = torch.stack(output.logits, 1) / (generation_config.temperature or 1.0)
        logprobs = logprobs_of_labels(logits, output.sequences[:, prompt_width:])
        recorded = logprobs, model.v_head(torch.stack(hidden, 1))
    return output.sequences, attention_mask, prompt_width, recorded


def response_logprobs_and_values(
    model: AutoModelForCausalLMWithValueHead,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_width: int,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward of the shared trunk: (log-probs, values, logits) at the response positions."""
    # Logits at position t predict token t + 1, so keep the R + 1 last positions and drop the last.
    logits, values = model(input_ids, attention_mask, logits_to_keep=response_width + 1)
    logits = logits[:, :-1] / temperature
    responses = input_ids[:, -response_width:]
    return logprobs_of_labels(logits, responses), values[:, :-1], logits


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
            logits_to_keep=response_width + 1,
            use_cache=False,
        ).logits
    return logprobs_of_labels(logits[:, :-1] / temperature, input_ids[:, -response_width:])


class RewardModelScorer:
    """Adapts a one-output sequence classifier (any backbone and tokenizer) to a RewardFunction."""

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int = 32, max_length: int = 512
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length

    @torch.inference_mode()
    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        device = next(self.model.parameters()).device
        texts = [prompt + response for prompt, response in zip(prompts, responses, strict=True)]
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            # Right padding: sequence classifiers pool the last non-pad token.
            encoded = self.tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
                padding_side="right",
            ).to(device)
            scores.extend(self.model(**encoded).logits[:, 0].float().tolist())
        return scores
