"""Batched sampling for evaluation, with a progress bar, and KL of samples to a reference model."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig as HFGenerationConfig
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf_lib.config import GenerationConfig
from rlhf_lib.models.decoding import fast_sampling
from rlhf_lib.ppo.core import logprobs_of_labels, response_mask_until_eos
from rlhf_lib.ppo.environment import TextEnvironment
from rlhf_lib.ppo.rollout import response_logits
from rlhf_lib.precision import use_bf16
from rlhf_lib.sampling import Sampling


def sampling_autocast(model: PreTrainedModel, cfg: GenerationConfig) -> torch.autocast:
    """bf16 autocast on the model's device where `cfg.bf16` resolves to bf16 there, else a no-op; for sampling, and
    for scoring samples in the precision they were drawn in."""
    device = next(model.parameters()).device
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(cfg.bf16, device.type))


def sampling_dtype(cfg: GenerationConfig, device_type: str = "cpu") -> torch.dtype:
    """The dtype to load a model's weights in for sampling on `device_type` under `cfg`: bf16 where it samples in bf16.

    Autocast would otherwise cast every fp32 weight again at each decoding step: on a 2-core AVX512-BF16 EPYC,
    SmolLM2-135M sampled 64 qa answers about 2x as fast with bf16 weights as in fp32, and 1.4x as fast as under
    autocast with fp32 weights (README, Development).
    """
    return torch.bfloat16 if use_bf16(cfg.bf16, device_type) else torch.float32


@torch.inference_mode()
def generate_responses(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], cfg: GenerationConfig
) -> tuple[list[str], list[torch.Tensor]]:
    """Sample one response per prompt; returns decoded texts and the token ids up to the first EOS."""
    torch.manual_seed(cfg.seed)
    device = next(model.parameters()).device
    ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    if cfg.temperature > 0:
        generate_kwargs = Sampling.create(
            cfg.temperature, cfg.top_k, cfg.top_p, cfg.max_new_tokens, **ids
        ).generate_kwargs()
    else:
        generate_kwargs = {
            "generation_config": HFGenerationConfig(do_sample=False, max_new_tokens=cfg.max_new_tokens, **ids)
        }
    encoder_decoder = model.config.is_encoder_decoder
    texts, token_ids = [], []
    for start in tqdm(range(0, len(prompts), cfg.batch_size), desc="generating", unit="batch"):
        batch = tokenizer(
            prompts[start : start + cfg.batch_size],
            return_tensors="pt",
            padding=True,
            padding_side="right" if encoder_decoder else "left",
        ).to(device)
        with fast_sampling(model), sampling_autocast(model, cfg):
            output = model.generate(**batch, **generate_kwargs)
        # A causal output repeats the prompt; a decoder's opens with its start token.
        responses = output[:, 1:] if encoder_decoder else output[:, batch["input_ids"].shape[1] :]
        lengths = response_mask_until_eos(responses, tokenizer.eos_token_id).sum(1)
        for row, n in zip(responses, lengths, strict=True):
            token_ids.append(row[: int(n)].cpu())
        texts.extend(tokenizer.batch_decode(token_ids[-len(responses) :], skip_special_tokens=True))
    return texts, token_ids


def generate_episodes(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    cfg: GenerationConfig,
    environment: TextEnvironment,
) -> tuple[list[str], list[torch.Tensor], list[torch.Tensor]]:
    """One tool-use episode per prompt: texts (tool answers included), response token ids, and action masks
    (1 on the policy's own tokens), for `sequence_kl` and `perplexity` to score the policy's tokens only."""
    if cfg.temperature <= 0:
        raise ValueError("tool-use episodes are sampled: set a temperature > 0")
    torch.manual_seed(cfg.seed)
    sampling = Sampling.create(
        cfg.temperature, cfg.top_k, cfg.top_p, cfg.max_new_tokens, tokenizer.pad_token_id, tokenizer.eos_token_id
    )
    texts, token_ids, masks = [], [], []
    for start in tqdm(range(0, len(prompts), cfg.batch_size), desc="episodes", unit="batch"):
        with sampling_autocast(model, cfg):
            rollout = environment.run(model, tokenizer, prompts[start : start + cfg.batch_size], sampling)
        responses = rollout.input_ids[:, rollout.prompt_width :]
        for row, mask, n in zip(responses, rollout.action_mask, rollout.response_lengths, strict=True):
            token_ids.append(row[:n].cpu())
            masks.append(mask[:n].cpu())
        texts.extend(rollout.texts)
    return texts, token_ids, masks


@torch.inference_mode()
def sequence_kl(
    policy: PreTrainedModel,
    reference: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    responses: list[torch.Tensor],
    temperature: float = 1.0,
    masks: list[torch.Tensor] | None = None,
) -> list[float]:
    """Per-sample KL estimate sum_t log p_T(y_t) - log p_ref,T(y_t) over each policy sample (k1).

    Unbiased for KL(p_T || p_ref,T) when the responses were sampled from the policy at `temperature` T without
    top-k/top-p truncation: both models are scored at the temperature the samples came from. With `masks` (tool-use
    episodes), only the tokens the policy sampled count.
    """
    if temperature <= 0:
        raise ValueError(f"the KL of sampled responses needs the sampling temperature (> 0), got {temperature}")
    ours = _masked(response_logprobs(policy, tokenizer, prompts, responses, temperature), masks)
    theirs = _masked(response_logprobs(reference, tokenizer, prompts, responses, temperature), masks)
    return [(a - b).sum().item() for a, b in zip(ours, theirs, strict=True)]


@torch.inference_mode()
def perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    responses: list[torch.Tensor],
    masks: list[torch.Tensor] | None = None,
) -> float:
    """exp(mean negative log-likelihood per response token) of the responses under `model`, each after its prompt.

    Pooled over tokens, not averaged per response, so a one-token response weighs one token; inf for no tokens.
    With `masks`, only the policy's own tokens count (not a tool's answers).
    """
    scored = _masked(response_logprobs(model, tokenizer, prompts, responses), masks)
    logprobs = torch.cat([lp.double() for lp in scored])
    return float(torch.exp(-logprobs.mean())) if len(logprobs) else float("inf")


def _masked(logprobs: list[torch.Tensor], masks: list[torch.Tensor] | None) -> list[torch.Tensor]:
    if masks is None:
        return logprobs
    return [lp[mask.bool()] for lp, mask in zip(logprobs, masks, strict=True)]


@torch.inference_mode()
def response_logprobs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    responses: list[torch.Tensor],
    temperature: float = 1.0,
    batch_size: int = 16,
) -> list[torch.Tensor]:
    """log p_T(y_t | prompt, y_<t) of each response token, one float tensor per response (empty for none).

    The responses' own token ids are scored: decoding and re-encoding could change the tokens. A causal model reads
    each prompt and response as one sequence; an encoder-decoder reads the prompt in its encoder.
    """
    device = next(model.parameters()).device
    scored = [torch.zeros(0) for _ in responses]
    pending = [i for i, response in enumerate(responses) if len(response)]
    for start in range(0, len(pending), batch_size):
        rows = pending[start : start + batch_size]
        prompt_ids = [tokenizer(prompts[i], return_tensors="pt")["input_ids"][0] for i in rows]
        answers = [responses[i].cpu() for i in rows]
        longest = max(map(len, answers))
        if model.config.is_encoder_decoder:  # prompts to the encoder, responses to the decoder, both right-padded
            ids, attention_mask = _padded(prompt_ids, tokenizer.pad_token_id, left=False)
            response_ids, _ = _padded(answers, tokenizer.pad_token_id, left=False)
        else:  # one left-padded sequence: every response ends at the last position
            ids, attention_mask = _padded(
                [torch.cat([p, a]) for p, a in zip(prompt_ids, answers, strict=True)], tokenizer.pad_token_id, left=True
            )
            response_ids = ids[:, -longest:]
        logits = response_logits(model, ids.to(device), attention_mask.to(device), response_ids.to(device))
        # In fp32 before the division, as generate scales the logits it samples from.
        logprobs = logprobs_of_labels(logits.float() / temperature, response_ids.to(device)).cpu()
        for k, i in enumerate(rows):
            n = len(responses[i])
            scored[i] = logprobs[k, :n] if model.config.is_encoder_decoder else logprobs[k, longest - n :]
    return scored


def _padded(sequences: list[torch.Tensor], pad_token_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack 1-D id tensors into [N, longest] ids and attention mask, padded on the left or the right."""
    width = max(map(len, sequences))
    ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(ids)
    for k, sequence in enumerate(sequences):
        span = slice(width - len(sequence), width) if left else slice(0, len(sequence))
        ids[k, span], attention_mask[k, span] = sequence, 1
    return ids, attention_mask
