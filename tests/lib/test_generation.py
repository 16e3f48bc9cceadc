"""Evaluation helpers: the per-sample KL of responses, against log-softmax over a full forward."""

from __future__ import annotations

import copy

import torch

from rlhf_lib.config import ModelConfig
from rlhf_lib.generation import sequence_kl
from rlhf_lib.models.loading import load_causal_lm, load_tokenizer


def test_sequence_kl_is_the_summed_log_ratio_of_the_response_tokens(tiny_lm_dir):
    cfg = ModelConfig(name_or_path=tiny_lm_dir)
    tokenizer = load_tokenizer(cfg)
    policy = load_causal_lm(cfg).eval()
    reference = copy.deepcopy(policy)
    torch.manual_seed(0)
    with torch.no_grad():
        for param in reference.parameters():
            param.add_(torch.randn_like(param) * 0.05)
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
