"""Stage `sft`: fine-tune the base policy on data/prepared/sft.jsonl; writes models/sft and metrics/sft.json."""

from __future__ import annotations

from rlhf_lib.callbacks import MetricsSink
from rlhf_lib.config import DataConfig
from rlhf_lib.data.sources import load_rows, split_train_eval
from rlhf_lib.models.loading import load_language_model, load_tokenizer, resolve_model_path
from rlhf_lib.sft_trainer import SFTTrainer
from tasks.params import DATA_DIR, MODELS_DIR, PipelineParams
from tasks.training import fit_and_save, stage_config

HELD_OUT_FRACTION = 0.05


def run(params: PipelineParams, sink: MetricsSink | None = None) -> dict[str, float]:
    data = DATA_DIR / "sft.jsonl"
    cfg = stage_config("sft", params.sft, params.policy, [data])
    rows = load_rows(DataConfig(source=str(data), seed=cfg.seed))
    train, held_out = split_train_eval(rows, HELD_OUT_FRACTION, cfg.seed)
    resolve_model_path(params.policy)  # converts a GGUF base once, before the tokenizer needs it
    tokenizer = load_tokenizer(params.policy, padding_side="right")
    trainer = SFTTrainer(load_language_model(params.policy), tokenizer, cfg, train, held_out, metrics_sink=sink)
    before = trainer.evaluate()["eval_loss"]
    evaluation, resumed_from = fit_and_save(trainer, tokenizer, MODELS_DIR / "sft")
    return {
        "sft/eval_loss_before": before,
        "sft/eval_loss": evaluation["eval_loss"],
        "sft/train_rows": len(train),
        "sft/resumed_from_step": resumed_from,
    }
