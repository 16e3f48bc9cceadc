"""Stage `judge`: train the held-out judge that `evaluate` scores both policies with (a `trained` judge).

The judge is a classifier trained on labelled sentences (Rotten Tomatoes by default) that neither the reward
model nor PPO ever saw, so a policy that games the reward model does not fool it too. Skipped (and says so) when
no judge in params.yaml is `trained`.
"""

from __future__ import annotations

from rlhf_lib.callbacks import MetricsSink
from rlhf_lib.classifier_trainer import ClassifierTrainer
from rlhf_lib.config import DataConfig
from rlhf_lib.data.sources import load_rows
from rlhf_lib.models.loading import load_sequence_scorer, load_tokenizer
from tasks.params import DATA_DIR, PipelineParams
from tasks.scoring import JUDGE_DIR
from tasks.training import SKIPPED_FILE, fit_and_save, skip, stage_config


def run(params: PipelineParams, sink: MetricsSink | None = None) -> dict[str, float]:
    if not params.trains_judge():
        return skip("judge", JUDGE_DIR, "no judge is `trained` (see judges)")
    train_file, test_file = DATA_DIR / "judge_train.jsonl", DATA_DIR / "judge_test.jsonl"
    backbone = params.judge_backbone()
    cfg = stage_config("judge", params.judge, backbone, [train_file])
    tokenizer = load_tokenizer(backbone, padding_side="right")
    model = load_sequence_scorer(backbone, num_labels=cfg.num_labels)
    train = load_rows(DataConfig(source=str(train_file)))
    test = load_rows(DataConfig(source=str(test_file)))
    trainer = ClassifierTrainer(model, tokenizer, cfg, train, test, sink)
    evaluation, resumed_from = fit_and_save(trainer, tokenizer, JUDGE_DIR)
    (JUDGE_DIR / SKIPPED_FILE).unlink(missing_ok=True)  # a trained judge replaces an earlier skip
    return {
        "judge/test_accuracy": evaluation["eval_accuracy"],
        "judge/test_loss": evaluation["eval_loss"],
        "judge/resumed_from_step": resumed_from,
    }
