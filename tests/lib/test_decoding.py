"""Decoding shortcuts against the plain model: the prepacked LM head and merged LoRA adapters give the
same logits, and the model is as it was after the block."""

from __future__ import annotations

import pytest
import torch

from rlhf_lib.config import LoraSettings, ModelConfig
from rlhf_lib.models.decoding import merged_lora, prepacked_lm_head
from rlhf_lib.models.loading import load_causal_lm
from rlhf_lib.precision import cast_frozen_weights

IDS = torch.randint(5, 100, (4, 9), generator=torch.Generator().manual_seed(0))


def _lora_model(tiny_lm_dir):
    torch.manual_seed(0)
    model = load_causal_lm(ModelConfig(name_or_path=tiny_lm_dir, lora=LoraSettings(r=4, alpha=8))).eval()
    with torch.no_grad():  # a non-trivial update, so a merge that missed a layer would show
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(torch.randn_like(param) * 0.3)
    return model


def test_prepacked_head_gives_the_plain_heads_logits_and_goes_away(tiny_lm_dir):
    model = load_causal_lm(ModelConfig(name_or_path=tiny_lm_dir)).eval()
    with torch.inference_mode():
        plain = model(input_ids=IDS).logits
        with prepacked_lm_head(model, rows=4) as packed:
            fast = model(input_ids=IDS).logits
        after = model(input_ids=IDS).logits
    assert packed, "oneDNN prepacking should be available on this CPU build of torch"
    assert torch.allclose(fast, plain, atol=1e-5)
    assert "forward" not in vars(model.get_output_embeddings())
    assert torch.equal(after, plain)


def test_prepacked_head_falls_through_when_gradients_are_needed(tiny_lm_dir):
    model = load_causal_lm(ModelConfig(name_or_path=tiny_lm_dir))
    with prepacked_lm_head(model, rows=4):
        logits = model(input_ids=IDS).logits
    logits.sum().backward()
    assert model.get_output_embeddings().weight.grad is not None


def test_merged_lora_gives_the_adapted_logits_and_restores_the_base(tiny_lm_dir):
    model = _lora_model(tiny_lm_dir)
    base = {name: p.detach().clone() for name, p in model.named_parameters() if "base_layer" in name}
    with torch.no_grad():
        adapted = model(input_ids=IDS).logits
        with model.disable_adapter():
            reference = model(input_ids=IDS).logits
        assert not torch.allclose(adapted, reference, atol=1e-3)
        with merged_lora(model) as merged:
            fast = model(input_ids=IDS).logits
        after = model(input_ids=IDS).logits
    assert merged
    assert torch.allclose(fast, adapted, atol=1e-5)
    assert torch.allclose(after, adapted, atol=1e-6)
    for name, param in model.named_parameters():
        if name in base:  # a merge and unmerge can round by an ulp, no more
            assert torch.allclose(param, base[name], rtol=0, atol=2 * torch.finfo(torch.float32).eps * 4)


def test_base_weights_do_not_drift_over_many_merges(tiny_lm_dir):
    model = _lora_model(tiny_lm_dir)
    base = {name: p.detach().clone() for name, p in model.named_parameters() if "base_layer" in name}
    for _ in range(200):
        with merged_lora(model):
            pass
    for name, param in model.named_parameters():
        if name in base:
            drift = (param - base[name]).abs().max().item()
            scale = base[name].abs().max().item()
            assert drift <= 1e-6 * scale, f"{name} drifted by {drift:.2e} over 200 merges"


@pytest.mark.parametrize("case", ["bf16 base", "tied head", "full model"])
def test_merge_is_skipped_where_it_would_not_be_exact(tiny_lm_dir, case):
    if case == "bf16 base":
        model = _lora_model(tiny_lm_dir)
        cast_frozen_weights(model, torch.bfloat16)
    elif case == "tied head":  # merging into the head would change the tied input embedding too
        lora = LoraSettings(r=4, alpha=8, target_modules=["lm_head", "q_proj"])
        model = load_causal_lm(ModelConfig(name_or_path=tiny_lm_dir, lora=lora))
        assert model.get_input_embeddings().weight is model.get_output_embeddings().base_layer.weight
    else:
        model = load_causal_lm(ModelConfig(name_or_path=tiny_lm_dir))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with merged_lora(model) as merged:
        unchanged_inside = all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    assert not merged and unchanged_inside
