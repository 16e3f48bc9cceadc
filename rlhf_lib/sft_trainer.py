"""Supervised fine-tuning on `transformers.Trainer`: full or LoRA, completion-only loss, packing.

An encoder-decoder policy reads the prompt in its encoder and is trained on the completion in its decoder.
"""

from __future__ import annotations

import logging

import datasets
from transformers import DataCollatorForSeq2Seq, PreTrainedModel, PreTrainedTokenizerBase

from rlhf_lib.callbacks import MetricsSink
from rlhf_lib.config import SFTConfig
from rlhf_lib.data.formats import check_format, pack_blocks, tokenize_seq2seq_sft, tokenize_sft
from rlhf_lib.hf_training import GuardedTrainer, metric_callbacks, training_arguments


def tokenize_sft_dataset(
    rows: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    cfg: SFTConfig,
    data_format: str = "auto",
    encoder_decoder: bool = False,
) -> datasets.Dataset:
    """Token ids and labels for every row; packed into full blocks of max_length when `cfg.packing`."""
    fmt = check_format(rows.column_names, data_format)
    if encoder_decoder and cfg.packing:
        raise ValueError("sft.packing: an encoder-decoder trains on one prompt/completion pair per row; turn it off")

    def tokenize(example):
        if encoder_decoder:
            return tokenize_seq2seq_sft(example, fmt, tokenizer, cfg.max_length)
        return tokenize_sft(example, fmt, tokenizer, cfg.max_length, cfg.completion_only_loss)

    tokenized = rows.map(tokenize, remove_columns=rows.column_names, desc="tokenizing")
    if cfg.packing:
        return tokenized.map(
            lambda batch: pack_blocks(batch, cfg.max_length), batched=True, batch_size=1000, desc="packing"
        )
    # A row whose prompt fills max_length trains no token, and a batch of only such rows gives a NaN loss (0 / 0):
    # they are dropped, with a warning that says how many.
    trained = [i for i, labels in enumerate(tokenized["labels"]) if any(label != -100 for label in labels)]
    if len(trained) < len(tokenized):
        logger.warning(
            "%d of %d SFT rows keep no trained token within max_length %d (the prompt fills it) and are left out; "
            "raise max_length or shorten the prompts to train on them",
            len(tokenized) - len(trained),
            len(tokenized),
            cfg.max_length,
        )
        tokenized = tokenized.select(trained)
    return tokenized


logger = logging.getLogger(__name__)


class SFTTrainer(GuardedTrainer):
    """`transformers.Trainer` fed from raw rows in any SFT format (text, prompt/completion, messages)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        config: SFTConfig,
        train_rows: datasets.Dataset,
        eval_rows: datasets.Dataset | None = None,
        data_format: str = "auto",
        metrics_sink: MetricsSink | None = None,
    ) -> None:
        # The labels of an encoder-decoder are its decoder's targets; the model shifts them into decoder inputs.
        encoder_decoder = model.config.is_encoder_decoder
        train = tokenize_sft_dataset(train_rows, tokenizer, config, data_format, encoder_decoder)
        if len(train) == 0:
            raise ValueError(
                "the SFT training set is empty after tokenisation (with packing: fewer tokens than max_length)"
            )
        evaluation = (
            tokenize_sft_dataset(eval_rows, tokenizer, config, data_format, encoder_decoder) if eval_rows else None
        )
        super().__init__(
            model=model,
            args=training_arguments(config, has_eval=bool(evaluation)),
            train_dataset=train,
            eval_dataset=evaluation,
            data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
            processing_class=tokenizer,
            callbacks=metric_callbacks(metrics_sink, "sft"),
        )
