"""Stage `judge`: train the held-out sentiment judge that `evaluate` scores both policies with.

The judge is a classifier trained on labelled sentences (Rotten Tomatoes by default) that neither
the reward model nor PPO ever saw, so a policy that games the reward model does not fool it too.
"""

from __future__ import annotations

from rlhf_lib.callbacks import MetricsSink
from rlhf_lib.classifier_trainer import ClassifierTrainer, PositiveClassScorer
from rlhf_lib.config import DataConfig, ModelConfig
from rlhf_lib.data.sources import load_rows
from rlhf_lib.hf_training import save_final, train_resuming
from rlhf_lib.models.loading import load_sequence_scorer, load_tokenizer, require_fits_context
from tasks.params import DATA_DIR, MODELS_DIR, PipelineParams, checkpoint_dir

JUDGE_DIR = MODELS_DIR / "judge"


def run(params: PipelineParams, sink: MetricsSink | None = None) -> dict[str, float]:
    train_file, test_file = DATA_DIR / "judge_train.jsonl", DATA_DIR / "judge_test.jsonl"
    backbone = params.judge_backbone()
    settings = {"judge": params.judge, "model": backbone.model_dump(), "seed": params.seed}
    cfg = params.judge_config().model_copy(
        update={"output_dir": str(checkpoint_dir("judge", settings, [train_file])), "seed": params.seed}
    )
    require_fits_context(backbone, cfg.max_length, "judge.max_length")
    tokenizer = load_tokenizer(backbone, padding_side="right")
    model = load_sequence_scorer(backbone, num_labels=cfg.num_labels)
    train = load_rows(DataConfig(source=str(train_file)))
    test = load_rows(DataConfig(source=str(test_file)))
    trainer = ClassifierTrainer(model, tokenizer, cfg, train, test, sink)
    resumed_from = train_resuming(trainer)["resumed_from_step"]
    evaluation = trainer.evaluate()
    save_final(trainer.model, tokenizer, JUDGE_DIR)
    return {
        "judge/test_accuracy": evaluation["eval_accuracy"],
        "judge/test_loss": evaluation["eval_loss"],
        "judge/resumed_from_step": resumed_from,
    }


def load_judge() -> PositiveClassScorer:
    """The trained judge from models/judge: P(positive) of each text."""
    cfg = ModelConfig(name_or_path=str(JUDGE_DIR))
    return PositiveClassScorer(load_sequence_scorer(cfg, num_labels=2), load_tokenizer(cfg, padding_side="right"))
