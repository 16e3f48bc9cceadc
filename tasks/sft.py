"""Stage `sft`: fine-tune the base policy on review text; writes models/sft and metrics/sft.json."""

from __future__ import annotations

from rlhf_lib.callbacks import MetricsSink
from rlhf_lib.config import DataConfig
from rlhf_lib.data.sources import load_rows, split_train_eval
from rlhf_lib.hf_training import save_final, train_resuming
from rlhf_lib.models.loading import load_causal_lm, load_tokenizer, require_fits_context, resolve_model_path
from rlhf_lib.sft_trainer import SFTTrainer
from tasks.params import DATA_DIR, MODELS_DIR, PipelineParams, checkpoint_dir

HELD_OUT_FRACTION = 0.05


def run(params: PipelineParams, sink: MetricsSink | None = None) -> dict[str, float]:
    data = DATA_DIR / "sft.jsonl"
    settings = {"sft": params.sft, "policy": params.policy.model_dump(), "seed": params.seed}
    cfg = params.sft_config().model_copy(
        update={"output_dir": str(checkpoint_dir("sft", settings, [data])), "seed": params.seed}
    )
    rows = load_rows(DataConfig(source=str(data), seed=params.seed))
    train, held_out = split_train_eval(rows, HELD_OUT_FRACTION, params.seed)
    resolve_model_path(params.policy)  # converts a GGUF base once, before the tokenizer needs it
    require_fits_context(params.policy, cfg.max_length, "sft.max_length")
    tokenizer = load_tokenizer(params.policy, padding_side="right")
    trainer = SFTTrainer(load_causal_lm(params.policy), tokenizer, cfg, train, held_out, metrics_sink=sink)
    before = trainer.evaluate()["eval_loss"]
    resumed_from = train_resuming(trainer)["resumed_from_step"]
    after = trainer.evaluate()["eval_loss"]
    save_final(trainer.model, tokenizer, MODELS_DIR / "sft")
    return {
        "sft/eval_loss_before": before,
        "sft/eval_loss": after,
        "sft/train_rows": len(train),
        "sft/resumed_from_step": resumed_from,
    }
