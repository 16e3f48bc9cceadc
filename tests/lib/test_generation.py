"""The evaluation KL of sampled responses: against log-softmax over a full forward, and, at the sampling
temperature, against the exact KL of the tempered next-token distributions; perplexity against the model's own loss."""

from __future__ import annotations

import copy

import numpy as np
import torch

from rlhf_lib.config import GenerationConfig, ModelConfig
from rlhf_lib.generation import generate_responses, perplexity, sequence_kl
from rlhf_lib.models.loading import load_causal_lm, load_tokenizer


def _policy_and_reference(model_dir: str, noise: float):
    """The tiny model and a copy with Gaussian noise on every weight; and the tokenizer."""
    cfg = ModelConfig(name_or_path=model_dir)
    policy = load_causal_lm(cfg).eval()
    reference = copy.deepcopy(policy)
    torch.manual_seed(0)
    with torch.no_grad():
        for param in reference.parameters():
            param.add_(torch.randn_like(param) * noise)
    return policy, reference, load_tokenizer(cfg)


def test_sequence_kl_is_the_summed_log_ratio_of_the_response_tokens(tiny_lm_dir):
    policy, reference, tokenizer = _policy_and_reference(tiny_lm_dir, 0.05)
    prompts = ["the movie was", "a terrible"]
    responses = [torch.tensor([7, 12, 30]), torch.tensor([], dtype=torch.long)]
    kls = sequence_kl(policy, reference, tokenizer, prompts, responses)

    prompt_ids = tokenizer(prompts[0], return_tensors="pt")["input_ids"][0]
    ids = torch.cat([prompt_ids, responses[0]]).unsqueeze(0)
    with torch.no_grad():
        logp, logq = (m(input_ids=ids).logits.log_softmax(-1)[0] for m in (policy, reference))
    expected = sum(
        (logp[t - 1, ids[0, t]] - logq[t - 1, ids[0, t]]).item() for t in range(len(prompt_ids), ids.shape[1])
    )
    assert abs(kls[0] - expected) < 1e-5 and abs(expected) > 1e-3
    assert kls[1] == 0.0


def test_evaluation_kl_is_unbiased_at_the_sampling_temperature(tiny_lm_dir):
    """One-token responses sampled at T = 0.7: the mean k1 estimate must match the exact KL(p_T || q_T)."""
    policy, reference, tokenizer = _policy_and_reference(tiny_lm_dir, 0.1)
    temperature, prompt = 0.7, "the movie was"
    prompts = [prompt] * 3000
    generation = GenerationConfig(max_new_tokens=1, temperature=temperature, batch_size=500, seed=3)
    _, responses = generate_responses(policy, tokenizer, prompts, generation)
    kls = np.array(sequence_kl(policy, reference, tokenizer, prompts, responses, temperature))

    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logp, logq = ((m(input_ids=ids).logits[0, -1] / temperature).log_softmax(-1) for m in (policy, reference))
    exact = float((logp.exp() * (logp - logq)).sum())
    standard_error = kls.std(ddof=1) / np.sqrt(kls.size)
    assert exact > 0.05 and abs(kls.mean() - exact) < 4 * standard_error
    # Scoring the same samples at temperature 1 (the old evaluation) misses the exact value by far more.
    at_one = np.array(sequence_kl(policy, reference, tokenizer, prompts, responses, 1.0))
    assert abs(at_one.mean() - exact) > 8 * standard_error


def test_perplexity_pools_response_tokens_as_the_models_own_loss_does(tiny_lm_dir):
    """exp of the token-weighted mean of transformers' language-modelling loss over each response (prompt masked)."""
    model, _, tokenizer = _policy_and_reference(tiny_lm_dir, 0.0)
    prompts = ["the movie was", "a terrible", "so"]
    responses = [torch.tensor([7, 12, 30]), torch.tensor([5]), torch.tensor([], dtype=torch.long)]
    losses, counts = [], []
    for prompt, response in zip(prompts[:2], responses[:2], strict=True):
        prompt_ids = tokenizer(prompt, return_tensors="pt")["input_ids"][0]
        ids = torch.cat([prompt_ids, response]).unsqueeze(0)
        labels = ids.clone()
        labels[0, : len(prompt_ids)] = -100
        with torch.no_grad():
            losses.append(model(input_ids=ids, labels=labels).loss.item())
        counts.append(len(response))
    expected = float(np.exp(np.average(losses, weights=counts)))
    assert abs(perplexity(model, tokenizer, prompts, responses) - expected) < 1e-3 * expected
    assert perplexity(model, tokenizer, prompts[2:], responses[2:]) == float("inf")


def test_sampling_precision_follows_the_generation_config_over_the_default(tiny_lm_dir, default_precision):
    policy, _, tokenizer = _policy_and_reference(tiny_lm_dir, 0.0)
    logits_dtypes = []
    policy.lm_head.register_forward_hook(lambda module, args, out: logits_dtypes.append(out.dtype))
    expected = {None: torch.bfloat16 if default_precision == "bf16" else torch.float32}
    expected |= {True: torch.bfloat16, False: torch.float32}
    for bf16, dtype in expected.items():
        logits_dtypes.clear()
        generation = GenerationConfig(max_new_tokens=3, temperature=1.0, batch_size=2, bf16=bf16)
        texts, _ = generate_responses(policy, tokenizer, ["the movie was", "a terrible"], generation)
        assert len(texts) == 2 and set(logits_dtypes) == {dtype}, bf16
