"""Decoding shortcuts against the plain model: the small-batch linear kernel and merged LoRA adapters give
the same logits, and the model is as it was after the block."""

from __future__ import annotations

import pytest
import torch

from rlhf_lib.config import LoraSettings, ModelConfig
from rlhf_lib.models import small_rows_linear
from rlhf_lib.models.decoding import merged_lora, small_rows_linears
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


def test_small_rows_linears_decode_like_the_plain_model_and_go_away(tiny_lm_dir, monkeypatch):
    model = load_causal_lm(ModelConfig(name_or_path=tiny_lm_dir)).eval()
    calls, kernel = [], small_rows_linear.small_rows_linear

    def counted(*args):
        out = kernel(*args)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(small_rows_linear, "small_rows_linear", counted)
    greedy = {"max_new_tokens": 6, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}
    with torch.no_grad():
        plain = model.generate(input_ids=IDS, attention_mask=torch.ones_like(IDS), **greedy)
        with small_rows_linears(model) as switched:
            fast = model.generate(input_ids=IDS, attention_mask=torch.ones_like(IDS), **greedy)
        after = model(input_ids=IDS).logits
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert switched == len(linears) > 0
    # 4 rows a step: the 5 decoding steps go through the kernel, and so does the prefill's LM head (it sees
    # the last position of each row); the prefill's layers multiply 36 rows and fall through.
    assert calls.count(True) == 5 * len(linears) + 1 and calls.count(False) == len(linears) - 1
    assert torch.equal(fast.sequences, plain.sequences)
    torch.testing.assert_close(torch.stack(fast.logits), torch.stack(plain.logits), rtol=1e-5, atol=1e-5)
    assert not any("forward" in vars(m) for m in linears)
    with torch.no_grad():
        assert torch.equal(after, model(input_ids=IDS).logits)


def test_small_rows_linears_fall_through_with_grad(tiny_lm_dir):
    model = load_causal_lm(ModelConfig(name_or_path=tiny_lm_dir))
    with small_rows_linears(model) as switched:
        logits = model(input_ids=IDS[:, :1]).logits
    assert switched
    logits.sum().backward()
    assert model.get_output_embeddings().weight.grad is not None


def test_small_rows_linears_leave_hooked_or_subclassed_linears_alone_and_survive_errors(tiny_lm_dir):
    model = load_causal_lm(ModelConfig(name_or_path=tiny_lm_dir)).eval()
    head = model.get_output_embeddings()
    own_forward = head.forward  # an instance-level forward, as accelerate's hooks install
    head.forward = own_forward

    class ScaledLinear(torch.nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    layer = model.model.layers[0]
    layer.mlp.down_proj.__class__ = ScaledLinear
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with pytest.raises(KeyError), small_rows_linears(model) as switched:
        assert switched == len(linears) - 2
        assert vars(head)["forward"] is own_forward and "forward" not in vars(layer.mlp.down_proj)
        raise KeyError("an error inside the block")
    assert vars(head)["forward"] is own_forward
    assert not any("forward" in vars(m) for m in linears if m is not head)


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
