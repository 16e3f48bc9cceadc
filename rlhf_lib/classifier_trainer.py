"""Text classification on `transformers.Trainer` (the pipeline's held-out sentiment judge uses it).

Trainer already computes cross-entropy from `labels`; this adds the tokenising and accuracy. A trained
classifier scores new texts through `rlhf_lib.rewards.ClassifierScorer`.
"""

from __future__ import annotations

import datasets
import numpy as np
from transformers import (
    DataCollatorWithPadding,
    EvalPrediction,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from rlhf_lib.callbacks import MetricsSink
from rlhf_lib.config import ClassifierConfig
from rlhf_lib.hf_training import GuardedTrainer, metric_callbacks, training_arguments


def accuracy(prediction: EvalPrediction) -> dict[str, float]:
    logits = np.asarray(prediction.predictions)
    return {"accuracy": float((logits.argmax(-1) == np.asarray(prediction.label_ids)).mean())}


def tokenize_labelled(rows: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> datasets.Dataset:
    missing = {"text", "label"} - set(rows.column_names)
    if missing:
        raise ValueError(f"classifier data needs columns text and label; missing {sorted(missing)}")
    return rows.map(
        lambda batch: {**tokenizer(batch["text"], truncation=True, max_length=max_length), "labels": batch["label"]},
        batched=True,
        remove_columns=rows.column_names,
        desc="tokenizing",
    )


class ClassifierTrainer(GuardedTrainer):
    """Fine-tunes a sequence classifier on (text, label) rows and reports held-out accuracy."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        config: ClassifierConfig,
        train_rows: datasets.Dataset,
        eval_rows: datasets.Dataset | None = None,
        metrics_sink: MetricsSink | None = None,
    ) -> None:
        evaluation = tokenize_labelled(eval_rows, tokenizer, config.max_length) if eval_rows else None
        super().__init__(
            model=model,
            args=training_arguments(config, has_eval=bool(evaluation)),
            train_dataset=tokenize_labelled(train_rows, tokenizer, config.max_length),
            eval_dataset=evaluation,
            data_collator=DataCollatorWithPadding(tokenizer),
            processing_class=tokenizer,
            compute_metrics=accuracy,
            callbacks=metric_callbacks(metrics_sink, "judge"),
        )
