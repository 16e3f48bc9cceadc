"""Shared fixtures: tiny models built from a config and saved with save_pretrained (real loading path)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# `bf16: null` means fp32 in every test, whatever the CPU offers (unless the shell sets RLHF_DEFAULT_PRECISION,
# to run the suite in bf16 on purpose); tests of the precision-dependent paths
# take the `default_precision` fixture, which runs them under both. Stage subprocesses inherit it.
os.environ.setdefault("RLHF_DEFAULT_PRECISION", "fp32")

import pytest  # noqa: E402
import torch  # noqa: E402

from rlhf_lib.models.tiny import (  # noqa: E402
    build_bpe_tokenizer,
    save_tiny_causal_lm,
    save_tiny_reward_backbone,
    save_tiny_seq2seq_lm,
)
from rlhf_lib.precision import DEFAULT_PRECISION_ENV  # noqa: E402

CORPUS = [
    "the movie was great and the acting was wonderful",
    "a terrible film with a boring plot and bad acting",
    "i loved this story , it was fun and moving",
    "the worst movie i have seen , dull and awful",
    "good good great fine nice happy bad sad poor",
] * 4

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> str:
    return str(save_tiny_causal_lm(tmp_path_factory.mktemp("tiny_lm"), CORPUS))


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory) -> str:
    return str(save_tiny_seq2seq_lm(tmp_path_factory.mktemp("tiny_t5"), CORPUS))


@pytest.fixture(scope="session")
def tiny_bart_dir(tmp_path_factory) -> str:
    """A 1+1-layer BART (learned absolute positions, untied final logits bias): the other seq2seq family."""
    from transformers import BartConfig, BartForConditionalGeneration

    path = tmp_path_factory.mktemp("tiny_bart")
    tokenizer = build_bpe_tokenizer(CORPUS, pad_token="<pad>")
    config = BartConfig(
        vocab_size=len(tokenizer),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        decoder_start_token_id=tokenizer.eos_token_id,  # BART starts decoding from its EOS
        forced_eos_token_id=None,
    )
    torch.manual_seed(0)
    BartForConditionalGeneration(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_rm_dir(tmp_path_factory) -> str:
    return str(save_tiny_reward_backbone(tmp_path_factory.mktemp("tiny_rm"), CORPUS))


@pytest.fixture(params=["fp32", "bf16"])
def default_precision(request, monkeypatch) -> str:
    """Runs a test once with `bf16: null` meaning fp32 and once meaning bf16, on any CPU."""
    monkeypatch.setenv(DEFAULT_PRECISION_ENV, request.param)
    return request.param
