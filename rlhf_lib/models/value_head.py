"""Language models with a scalar value head on the same trunk: one forward gives logits and values.

The head and the save/load logic are independent of the trunk's kind; the causal and the encoder-decoder
(seq2seq) classes differ only in their forward. In both, the value head reads what the LM head reads.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, PreTrainedModel

from rlhf_lib.io import atomic_dir
from rlhf_lib.models.adapters import adapters_off
from rlhf_lib.models.lm_head import make_lm_head_input_contiguous, recording_lm_head_inputs

VALUE_HEAD_WEIGHTS = "value_head.safetensors"
VALUE_HEAD_CONFIG = "value_head_config.json"


class ValueHead(nn.Module):
    """Maps each hidden state to a scalar value estimate."""

    def __init__(self, hidden_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.summary = nn.Linear(hidden_size, 1)
        # Small init so early value predictions do not swamp the policy gradient.
        nn.init.normal_(self.summary.weight, std=1.0 / (hidden_size + 1) ** 0.5 * 0.1)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.summary(self.dropout(hidden_states.to(self.summary.weight.dtype))).squeeze(-1)


class ModelWithValueHead(nn.Module):
    """Shared machinery: holds a (possibly peft-wrapped) pretrained model and a value head."""

    auto_class: type = AutoModelForCausalLM
    peft_auto_class_name = "AutoPeftModelForCausalLM"
    is_encoder_decoder = False

    def __init__(self, pretrained_model: PreTrainedModel, value_head: ValueHead | None = None) -> None:
        super().__init__()
        self.pretrained_model = pretrained_model
        make_lm_head_input_contiguous(pretrained_model)
        self.v_head = value_head or ValueHead(pretrained_model.config.hidden_size)

    @property
    def config(self):
        return self.pretrained_model.config

    @property
    def is_peft(self) -> bool:
        return hasattr(self.pretrained_model, "peft_config")

    def reference_mode(self) -> AbstractContextManager:
        """Context in which the trunk is the frozen reference: LoRA adapters off (no second copy)."""
        if not self.is_peft:
            raise RuntimeError("reference_mode needs a LoRA policy; keep a frozen copy for full fine-tuning")
        return adapters_off(self.pretrained_model)

    def generate(self, *args, **kwargs) -> torch.Tensor:
        return self.pretrained_model.generate(*args, **kwargs)

    def save_pretrained(self, path: str | Path, tokenizer=None) -> None:
        """Write the trunk (or its adapter), the value head, its config and the tokenizer, atomically."""
        with atomic_dir(path) as staging:
            self.pretrained_model.save_pretrained(staging)
            if tokenizer is not None:
                tokenizer.save_pretrained(staging)
            save_file({k: v.contiguous() for k, v in self.v_head.state_dict().items()}, staging / VALUE_HEAD_WEIGHTS)
            meta = {"hidden_size": self.config.hidden_size, "is_peft": self.is_peft}
            (staging / VALUE_HEAD_CONFIG).write_text(json.dumps(meta))

    @classmethod
    def from_pretrained(
        cls, path: str | Path, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False, **kwargs
    ) -> ModelWithValueHead:
        """Load a folder written by `save_pretrained`, or a plain model folder (fresh value head)."""
        path = Path(path)
        if (path / "adapter_config.json").is_file():
            import peft

            trunk = getattr(peft, cls.peft_auto_class_name).from_pretrained(
                path, dtype=dtype, is_trainable=True, trust_remote_code=trust_remote_code, **kwargs
            )
        else:
            trunk = cls.auto_class.from_pretrained(
                path, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code, **kwargs
            )
        model = cls(trunk)
        if (path / VALUE_HEAD_WEIGHTS).is_file():
            model.v_head.load_state_dict(load_file(path / VALUE_HEAD_WEIGHTS))
        return model


class AutoModelForCausalLMWithValueHead(ModelWithValueHead):
    """A causal LM plus a per-token scalar value computed from the trunk's final hidden states."""

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int | torch.Tensor = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (logits, values) at the last `logits_to_keep` positions (0 keeps all), or at the positions
        a 1-D index tensor names."""
        # Positions are counted from the first real token so left padding does not shift them.
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = self.pretrained_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_hidden_states=True,
            logits_to_keep=logits_to_keep,
            use_cache=False,
        )
        hidden = out.hidden_states[-1]
        if isinstance(logits_to_keep, torch.Tensor):
            hidden = hidden[:, logits_to_keep]
        elif logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        return out.logits, self.v_head(hidden)


class AutoModelForSeq2SeqLMWithValueHead(ModelWithValueHead):
    """An encoder-decoder LM (T5, BART, ...) plus a scalar value at every decoder position."""

    auto_class = AutoModelForSeq2SeqLM
    peft_auto_class_name = "AutoPeftModelForSeq2SeqLM"
    is_encoder_decoder = True

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, decoder_input_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt goes to the encoder; return (logits, values) at each decoder position."""
        # The head's input rather than the decoder's hidden states: T5 rescales them before a tied head, and
        # generation records the head's input (`recording_last_hidden_states`), so both paths read one tensor.
        with recording_lm_head_inputs(self.pretrained_model) as head_inputs:
            out = self.pretrained_model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                decoder_input_ids=decoder_input_ids,
                use_cache=False,
            )
        return out.logits, self.v_head(head_inputs[-1])


def with_value_head(trunk: PreTrainedModel) -> ModelWithValueHead:
    """Wrap a (possibly peft) causal or encoder-decoder LM in the value-head class of its kind."""
    seq2seq = getattr(trunk.config, "is_encoder_decoder", False)
    return (AutoModelForSeq2SeqLMWithValueHead if seq2seq else AutoModelForCausalLMWithValueHead)(trunk)
