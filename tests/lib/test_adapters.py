"""LoRA shortcuts against peft's own: the base model with layers swapped out, and merged adapters, give the
same logits; the model is as it was after the block, also after an error."""

from __future__ import annotations

import pytest
import torch

from rlhf_lib.config import LoraSettings, ModelConfig
from rlhf_lib.models.adapters import adapters_off, merged_lora
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


def test_adapters_off_is_peft_s_base_model_and_puts_the_layers_back(tiny_lm_dir):
    model = _lora_model(tiny_lm_dir)
    modules = dict(model.named_modules())
    with torch.no_grad():
        adapted = model(input_ids=IDS).logits
        with model.disable_adapter():
            base = model(input_ids=IDS).logits
        assert not torch.allclose(adapted, base, atol=1e-3)
        with pytest.raises(KeyError), adapters_off(model):
            assert torch.equal(model(input_ids=IDS).logits, base)
            assert not any("lora" in name for name, _ in model.named_modules())
            raise KeyError("an error inside the block")
        assert dict(model.named_modules()) == modules
        assert torch.equal(model(input_ids=IDS).logits, adapted)


def test_adapters_off_leaves_merged_or_hooked_layers_to_peft(tiny_lm_dir):
    model = _lora_model(tiny_lm_dir)
    with torch.no_grad():
        with model.disable_adapter():
            base = model(input_ids=IDS).logits
        model.merge_adapter()  # peft's merge: base + update in the base weights, which must come out again
        with adapters_off(model):
            torch.testing.assert_close(model(input_ids=IDS).logits, base, rtol=1e-5, atol=1e-5)
        model.unmerge_adapter()
        layer = next(m for name, m in model.named_modules() if name.endswith("q_proj"))
        layer.register_forward_hook(lambda *args: None)
        with adapters_off(model):
            assert any("lora" in name for name, _ in model.named_modules()), "a hooked layer stays in place"
            torch.testing.assert_close(model(input_ids=IDS).logits, base, rtol=1e-5, atol=1e-5)


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
