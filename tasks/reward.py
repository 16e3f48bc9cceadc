"""Stage `reward`: train the reward model on preference pairs; writes models/reward and metrics/reward.json."""

from __future__ import annotations

from rlhf_lib.callbacks import MetricsSink
from rlhf_lib.config import DataConfig
from rlhf_lib.data.sources import load_rows, split_train_eval
from rlhf_lib.hf_training import save_final, train_resuming
from rlhf_lib.models.loading import load_sequence_scorer, load_tokenizer, require_fits_context
from rlhf_lib.reward_trainer import RewardTrainer
from tasks.params import DATA_DIR, MODELS_DIR, PipelineParams, checkpoint_dir

HELD_OUT_FRACTION = 0.1


def run(params: PipelineParams, sink: MetricsSink | None = None) -> dict[str, float]:
    data = DATA_DIR / "preference.jsonl"
    settings = {"reward": params.reward, "model": params.reward_model.model_dump(), "seed": params.seed}
    cfg = params.reward_config().model_copy(
        update={"output_dir": str(checkpoint_dir("reward", settings, [data])), "seed": params.seed}
    )
    require_fits_context(params.reward_model, cfg.max_length, "reward.max_length")
    rows = load_rows(DataConfig(source=str(data), seed=params.seed))
    train, held_out = split_train_eval(rows, HELD_OUT_FRACTION, params.seed)
    tokenizer = load_tokenizer(params.reward_model, padding_side="right")
    trainer = RewardTrainer(load_sequence_scorer(params.reward_model), tokenizer, cfg, train, held_out, sink)
    resumed_from = train_resuming(trainer)["resumed_from_step"]
    evaluation = trainer.evaluate()
    save_final(trainer.model, tokenizer, MODELS_DIR / "reward")
    return {
        "reward/eval_accuracy": evaluation["eval_accuracy"],
        "reward/eval_margin": evaluation["eval_margin"],
        "reward/eval_loss": evaluation["eval_loss"],
        "reward/resumed_from_step": resumed_from,
    }
