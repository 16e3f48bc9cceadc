"""Encoder-decoder policies (T5, BART) through the same value-head model, rollout, SFT and PPO trainers."""

from __future__ import annotations

import shutil

import datasets
import pytest
import torch

from rlhf_lib.config import ConfigError, GenerationConfig, LoraSettings, ModelConfig, PPOConfig, SFTConfig
from rlhf_lib.generation import generate_responses, perplexity, response_logprobs
from rlhf_lib.models.loading import load_language_model, load_tokenizer, resolve_model_path
from rlhf_lib.models.value_head import (
    AutoModelForSeq2SeqLMWithValueHead,
    with_value_head,
)
from rlhf_lib.ppo.checkpoint import list_checkpoints
from rlhf_lib.ppo.environment import TextEnvironment
from rlhf_lib.ppo.trainer import PPOTrainer
from rlhf_lib.sft_trainer import SFTTrainer
from rlhf_lib.tools import CALCULATOR, ToolBox

PROMPTS = ["the movie was", "i loved this story , it", "a terrible", "the acting", "good good", "this story"]


def _model_dir(request, family: str) -> str:
    return request.getfixturevalue({"t5": "tiny_t5_dir", "bart": "tiny_bart_dir"}[family])


def _perturbed(model: torch.nn.Module) -> None:
    """Non-trivial adapters and value head, so a mix-up of either would show."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "v_head" in name:
                param.add_(torch.randn_like(param) * 0.5)


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_logprobs_and_values_equal_an_independent_teacher_forced_forward(request, family):
    cfg = ModelConfig(name_or_path=_model_dir(request, family))
    tokenizer = load_tokenizer(cfg)
    torch.manual_seed(0)
    model = with_value_head(load_language_model(cfg)).eval()
    assert isinstance(model, AutoModelForSeq2SeqLMWithValueHead)
    _perturbed(model)
    encoded = tokenizer(PROMPTS[:3], return_tensors="pt", padding=True, padding_side="right")
    responses = torch.randint(3, len(tokenizer), (3, 5))
    from rlhf_lib.ppo.rollout import response_logprobs_and_values

    with torch.no_grad():
        logprobs, values, _ = response_logprobs_and_values(
            model, encoded["input_ids"], encoded["attention_mask"], responses, temperature=0.7
        )
        # Independently: the decoder reads [start, y_1 .. y_{R-1}] and position t scores y_t; the value head reads the
        # decoder's last hidden state as the LM head sees it (T5 scales it by d_model ** -0.5 before its tied head).
        trunk = model.pretrained_model
        start = torch.full((3, 1), trunk.config.decoder_start_token_id)
        out = trunk(
            input_ids=encoded["input_ids"],
            attention_mask=encoded["attention_mask"],
            decoder_input_ids=torch.cat([start, responses[:, :-1]], 1),
            output_hidden_states=True,
        )
        expected = torch.log_softmax(out.logits / 0.7, -1).gather(-1, responses[..., None])[..., 0]
        hidden = out.decoder_hidden_states[-1]
        if family == "t5":
            hidden = hidden * trunk.config.d_model**-0.5
        expected_values = model.v_head.summary(hidden)[..., 0]
    assert torch.allclose(logprobs, expected, atol=1e-5)
    assert torch.allclose(values, expected_values, atol=1e-5)
    # The prompt batch's padding does not reach the real tokens' outputs.
    with torch.no_grad():
        alone = response_logprobs_and_values(
            model, *tokenizer(PROMPTS[2:3], return_tensors="pt").values(), responses[2:3], 0.7
        )
    assert torch.allclose(alone[0], logprobs[2:3], atol=1e-5)


def _trainer(model_dir, out_dir, lora=None, reward=None, **overrides) -> PPOTrainer:
    cfg = ModelConfig(name_or_path=model_dir, lora=lora)
    tokenizer = load_tokenizer(cfg)
    torch.manual_seed(0)
    model = with_value_head(load_language_model(cfg))
    settings = dict(
        output_dir=str(out_dir),
        batch_size=12,
        num_mini_batches=2,
        ppo_epochs=2,
        total_steps=4,
        max_new_tokens=8,
        learning_rate=3e-3,
        kl_coef=0.05,
        save_steps=100,
        seed=0,
        top_k=0,
    )
    reward = reward or _share_of(tokenizer, ("great", "good", "fun", "nice", "happy", "loved"))
    return PPOTrainer(PPOConfig(**(settings | overrides)), model, tokenizer, PROMPTS, reward)


def _share_of(tokenizer, words):
    targets = {tokenizer(word, add_special_tokens=False)["input_ids"][0] for word in words}

    def reward(prompts, responses):
        ids = [tokenizer(response, add_special_tokens=False)["input_ids"] for response in responses]
        return [sum(token in targets for token in row) / max(len(row), 1) for row in ids]

    return reward


def test_rollout_masks_after_the_first_eos_and_scores_decoder_positions(tiny_t5_dir, tmp_path, default_precision):
    trainer = _trainer(tiny_t5_dir, tmp_path, max_new_tokens=12)
    # Make EOS likely so that some responses end early and the rest run to the limit.
    with torch.no_grad():
        trainer.policy.pretrained_model.lm_head.weight[trainer.tokenizer.eos_token_id] += 0.4
    batch = trainer.rollout(PROMPTS * 4)
    eos = trainer.tokenizer.eos_token_id
    assert batch.input_ids.shape[1] < 12  # the encoder's prompt only, not prompt + response
    assert batch.logprobs.shape == batch.values.shape == batch.mask.shape == batch.response_ids.shape
    ended = 0
    for row, mask in zip(batch.response_ids.tolist(), batch.mask.tolist(), strict=True):
        last = row.index(eos) if eos in row else len(row) - 1
        ended += eos in row
        assert mask == [1] * (last + 1) + [0] * (len(row) - last - 1)
    assert 0 < ended < len(batch.mask)
    assert batch.contains_eos.sum().item() == ended


@pytest.mark.parametrize("lora", [None, LoraSettings(r=4, alpha=8)], ids=["full", "lora"])
def test_round_trip_gives_identical_outputs(tiny_t5_dir, tmp_path, lora):
    cfg = ModelConfig(name_or_path=tiny_t5_dir, lora=lora)
    tokenizer = load_tokenizer(cfg)
    model = with_value_head(load_language_model(cfg)).eval()
    _perturbed(model)
    model.save_pretrained(tmp_path / "saved", tokenizer=tokenizer)
    if lora is not None:
        assert (tmp_path / "saved" / "adapter_config.json").is_file()
    loaded = AutoModelForSeq2SeqLMWithValueHead.from_pretrained(tmp_path / "saved").eval()
    assert loaded.is_peft == (lora is not None)
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side="right")
    decoder_input_ids = torch.randint(3, len(tokenizer), (len(PROMPTS), 6))
    with torch.no_grad():
        for a, b in zip(
            model(**encoded, decoder_input_ids=decoder_input_ids),
            loaded(**encoded, decoder_input_ids=decoder_input_ids),
            strict=True,
        ):
            assert torch.equal(a, b)


def test_ppo_raises_a_simple_reward_with_bounded_kl_and_saves_a_seq2seq_model(tiny_t5_dir, tmp_path):
    # Sampling the whole vocabulary of a random tiny T5 rarely hits the target words at first; with kl_coef 0.1 the
    # penalty won on some CPUs (an AMD EPYC with avx512_bf16: 0.017 -> 0.057) and lost on others. With 0.02, measured
    # there for seeds 0-4: 0.01-0.05 -> 0.63-0.98, KL at most 45 nats over 8 tokens.
    trainer = _trainer(tiny_t5_dir, tmp_path, total_steps=60, kl_estimator="k3", kl_coef=0.02)
    history = trainer.train()
    first = sum(m["objective/scores"] for m in history[:10]) / 10
    last = sum(m["objective/scores"] for m in history[-10:]) / 10
    assert last > 2 * first and last > first + 0.1, (first, last)
    kls = torch.tensor([m["objective/kl"] for m in history])
    assert torch.isfinite(kls).all() and kls.max() < 80
    trainer.save_policy(tmp_path / "policy")
    reloaded = load_language_model(ModelConfig(name_or_path=str(tmp_path / "policy")))
    assert reloaded.config.is_encoder_decoder and not hasattr(reloaded, "peft_config")


def test_lora_policy_saves_merged_and_reference_is_the_base(tiny_t5_dir, tmp_path, default_precision):
    trainer = _trainer(tiny_t5_dir, tmp_path, lora=LoraSettings(r=4, alpha=8), total_steps=2, learning_rate=5e-2)
    assert trainer.ref_model is None  # the reference is the base with the adapter off: no second copy
    trainer.train()
    batch = trainer.rollout(PROMPTS)
    assert (batch.logprobs - batch.ref_logprobs).abs().max() > 1e-4  # the adapter moved the policy
    trainer.save_policy(tmp_path / "policy")
    reloaded = with_value_head(load_language_model(ModelConfig(name_or_path=str(tmp_path / "policy")))).eval()
    from rlhf_lib.ppo.rollout import response_logprobs_and_values

    with torch.no_grad():
        merged, _, _ = response_logprobs_and_values(
            reloaded, batch.input_ids, batch.attention_mask, batch.response_ids, 1.0
        )
    # In bf16 the rollout's log-probs come from bf16 base weights under autocast; the merged fp32 model is exact.
    tolerance = 1e-4 if default_precision == "fp32" else 0.1
    assert torch.allclose(merged[batch.mask.bool()], batch.logprobs[batch.mask.bool()], atol=tolerance)


def test_resume_gives_the_same_next_update(tiny_t5_dir, tmp_path):
    straight = _trainer(tiny_t5_dir, tmp_path / "a", total_steps=3, save_steps=2)
    history = straight.train()
    resumed = _trainer(tiny_t5_dir, tmp_path / "b", total_steps=3, save_steps=2)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "checkpoint-2", tmp_path / "b" / "checkpoints" / "checkpoint-2")
    resumed_history = resumed.train()
    assert resumed.global_step == 3 and len(resumed_history) == 1
    assert resumed_history[0]["loss/policy_avg"] == pytest.approx(history[2]["loss/policy_avg"], abs=1e-6)
    for (name, a), (_, b) in zip(straight.policy.named_parameters(), resumed.policy.named_parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    assert [p.name for p in list_checkpoints(tmp_path / "b" / "checkpoints")] == ["checkpoint-2", "checkpoint-3"]


def test_tool_use_needs_a_causal_policy(tiny_t5_dir, tmp_path):
    cfg = ModelConfig(name_or_path=tiny_t5_dir)
    model = with_value_head(load_language_model(cfg))
    environment = TextEnvironment(ToolBox([CALCULATOR]))
    with pytest.raises(ValueError, match="causal policy"):
        PPOTrainer(
            PPOConfig(output_dir=str(tmp_path)),
            model,
            load_tokenizer(cfg),
            PROMPTS,
            lambda p, r: [0.0] * len(p),
            environment=environment,
        )


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_sft_trains_the_decoder_on_completions_and_lowers_held_out_loss(request, family, tmp_path):
    cfg = ModelConfig(name_or_path=_model_dir(request, family))
    tokenizer = load_tokenizer(cfg, padding_side="right")
    rows = datasets.Dataset.from_list(
        [{"prompt": f"say {word}", "completion": f"{word} {word} great"} for word in ("good", "fun", "nice", "sad")] * 8
    )
    sft = SFTConfig(
        output_dir=str(tmp_path),
        max_steps=30,
        per_device_batch_size=8,
        learning_rate=3e-3,
        max_length=32,
        logging_steps=10,
        save_steps=100,
    )
    trainer = SFTTrainer(load_language_model(cfg), tokenizer, sft, rows, rows.select(range(8)))
    example = trainer.train_dataset[0]
    assert tokenizer.decode(example["labels"], skip_special_tokens=True) == "good good great"
    assert example["labels"][-1] == tokenizer.eos_token_id
    assert "say good" in tokenizer.decode(example["input_ids"])  # the prompt is the encoder's input
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert after < 0.7 * before, (before, after)  # measured: T5 6.8 -> 0.44, BART (d_model 32) 5.9 -> 3.4
    with pytest.raises(ValueError, match="packing"):
        SFTTrainer(load_language_model(cfg), tokenizer, sft.model_copy(update={"packing": True}), rows)


def test_generation_and_scoring_helpers_follow_the_decoder(tiny_t5_dir, tmp_path):
    cfg = ModelConfig(name_or_path=tiny_t5_dir)
    tokenizer = load_tokenizer(cfg)
    model = load_language_model(cfg).eval()
    generation = GenerationConfig(max_new_tokens=6, temperature=1.0, top_k=0, top_p=1.0, batch_size=4, seed=0)
    texts, ids = generate_responses(model, tokenizer, PROMPTS, generation)
    assert len(texts) == len(ids) == len(PROMPTS)
    assert all(0 < len(row) <= 6 for row in ids)
    assert all(row[0].item() != model.config.decoder_start_token_id for row in ids)  # the start token is not kept
    scored = response_logprobs(model, tokenizer, PROMPTS, ids, batch_size=4)
    with torch.no_grad():  # one prompt at a time, no batch padding, as an independent check
        for prompt, row, logprobs in zip(PROMPTS, ids, scored, strict=True):
            encoded = tokenizer(prompt, return_tensors="pt")
            start = torch.tensor([[model.config.decoder_start_token_id]])
            logits = model(**encoded, decoder_input_ids=torch.cat([start, row[None, :-1]], 1)).logits
            expected = torch.log_softmax(logits, -1)[0].gather(-1, row[:, None])[:, 0]
            assert torch.allclose(logprobs, expected, atol=1e-5)
    assert perplexity(model, tokenizer, PROMPTS, ids) == pytest.approx(
        torch.exp(-torch.cat(scored).double().mean()).item(), rel=1e-6
    )


def test_built_model_source_calls_the_builder_once(tmp_path):
    target = tmp_path / "built"
    cfg = ModelConfig(name_or_path="build:rlhf_lib.models.tiny:save_tiny_seq2seq_lm", converted_dir=str(target))
    assert resolve_model_path(cfg) == str(target)
    stamp = (target / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_path(cfg) == str(target) and (target / "model.safetensors").stat().st_mtime_ns == stamp
    assert load_language_model(cfg).config.is_encoder_decoder
    with pytest.raises(ConfigError, match="converted_dir"):
        resolve_model_path(ModelConfig(name_or_path="build:rlhf_lib.models.tiny:save_tiny_seq2seq_lm"))
