"""The seq2seq recipe's base policy: a small T5 built from a config, untrained, with a tokenizer trained with
`tokenizers` on the task's own text (no pretrained encoder-decoder installs offline).

params.yaml names it as `policy.name_or_path: build:recipes.seq2seq.model:build_t5`; the pipeline calls it once
and reuses the folder (`policy.converted_dir`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

from recipes.seq2seq.numbers import INSTRUCTION, LARGEST, prompt_for, spell

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
SEED = 0


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the task's text, with every digit a token of its own (so the model reads a
    number digit by digit, as it must to spell it)."""
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Digits(individual_digits=True)]
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins word tokens with spaces
    corpus = [INSTRUCTION, *(f"{prompt_for(n)} {spell(n)}" for n in range(0, LARGEST + 1, 997))]
    tokenizer.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=[PAD, EOS, UNK]))
    # Like T5's own tokenizer, it ends every encoded text with EOS.
    tokenizer.post_processor = TemplateProcessing(
        single=f"$A {EOS}", special_tokens=[(EOS, tokenizer.token_to_id(EOS))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=PAD, eos_token=EOS, unk_token=UNK)


def build_t5(folder: str | Path, d_model: int = 128, layers: int = 2) -> Path:
    """Write an untrained T5 (d_model 128, 2 encoder and 2 decoder layers: 0.9M parameters) and its tokenizer."""
    tokenizer = build_tokenizer()
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_ff=4 * d_model,
        d_kv=d_model // 4,
        num_heads=4,
        num_layers=layers,
        num_decoder_layers=layers,
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(SEED)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)
