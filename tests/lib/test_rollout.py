"""Rollout shortcuts checked against the plain computation: generation-recorded log-probs and values
(sampled through the small-batch linear kernel and, for LoRA, merged adapters), and the contiguous LM-head input."""

from __future__ import annotations

import pytest
import torch

from rlhf_lib.config import LoraSettings, ModelConfig
from rlhf_lib.models.loading import load_causal_lm, load_language_model, load_tokenizer
from rlhf_lib.models.value_head import with_value_head
from rlhf_lib.ppo.core import response_mask_until_eos
from rlhf_lib.ppo.rollout import response_logprobs_and_values, sample_responses
from rlhf_lib.sampling import Sampling

PROMPTS = ["the movie was", "i loved this story , it", "a terrible"]


@pytest.mark.parametrize("kind", ["causal", "t5", "bart"])
@pytest.mark.parametrize("lora", [None, LoraSettings(r=4, alpha=8)], ids=["full", "lora"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_and_values_recorded_during_generation_match_a_full_forward(request, kind, lora, temperature):
    model_dir = request.getfixturevalue({"causal": "tiny_lm_dir", "t5": "tiny_t5_dir", "bart": "tiny_bart_dir"}[kind])
    cfg = ModelConfig(name_or_path=model_dir, lora=lora)
    tokenizer = load_tokenizer(cfg)
    torch.manual_seed(0)
    model = with_value_head(load_language_model(cfg)).eval()
    with torch.no_grad():  # a non-trivial adapter and value head, so a mix-up of either would show
        for name, param in model.named_parameters():
            if "lora_B" in name or "v_head" in name:
                param.add_(torch.randn_like(param) * 0.5)
    sampling = Sampling.create(temperature, 0, 1.0, 10, tokenizer.pad_token_id, tokenizer.eos_token_id)
    with torch.no_grad():
        sampled = sample_responses(model, tokenizer, PROMPTS, 64, sampling, record_policy=True)
        logprobs, values, _ = response_logprobs_and_values(
            model, sampled.input_ids, sampled.attention_mask, sampled.response_ids, temperature
        )
    recorded_logprobs, recorded_values = sampled.recorded
    mask = response_mask_until_eos(sampled.response_ids, tokenizer.eos_token_id).bool()
    assert recorded_logprobs.shape == recorded_values.shape == mask.shape
    assert torch.allclose(recorded_logprobs[mask], logprobs[mask], atol=1e-4)
    assert torch.allclose(recorded_values[mask], values[mask], atol=1e-4)


def test_lm_head_reads_a_contiguous_input_and_gives_the_same_logits(tiny_lm_dir):
    model = load_causal_lm(ModelConfig(name_or_path=tiny_lm_dir)).eval()
    seen = []
    model.get_output_embeddings().register_forward_hook(lambda module, args, out: seen.append(args[0]))
    ids = torch.randint(5, 100, (3, 12))
    with torch.no_grad():
        kept = model(input_ids=ids, logits_to_keep=5).logits
        full = model(input_ids=ids).logits
    assert seen[0].is_contiguous() and seen[0].shape[1] == 5
    assert torch.allclose(kept, full[:, -5:], atol=1e-6)
