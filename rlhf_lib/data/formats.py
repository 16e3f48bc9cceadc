"""Dataset formats TRL users know, turned into token ids.

Formats: plain `text`; `prompt`/`completion`; chat `messages` (rendered with the chat template);
preference `chosen`/`rejected` with an optional `prompt` (strings or message lists).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

Messages = list[dict[str, str]]

FORMAT_COLUMNS = {
    "preference": ("chosen", "rejected"),
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}


def detect_format(columns: Sequence[str]) -> str:
    """Infer the record format from the column names (first match in FORMAT_COLUMNS order)."""
    for name, required in FORMAT_COLUMNS.items():
        if all(column in columns for column in required):
            return name
    raise ValueError(f"cannot infer the data format from columns {list(columns)}; expected one of {FORMAT_COLUMNS}")


def check_format(columns: Sequence[str], fmt: str) -> str:
    """Resolve "auto" and check the columns the format needs are present."""
    fmt = detect_format(columns) if fmt == "auto" else fmt
    missing = [column for column in FORMAT_COLUMNS[fmt] if column not in columns]
    if missing:
        raise ValueError(f"data.format={fmt!r} needs columns {missing}, found {list(columns)}")
    return fmt


def prompt_and_completion(example: dict[str, Any], fmt: str, tokenizer: PreTrainedTokenizerBase) -> tuple[str, str]:
    """Split one SFT example into the text the loss ignores (prompt) and the text it trains on."""
    if fmt == "text":
        return "", example["text"] + tokenizer.eos_token
    if fmt == "prompt_completion":
        prompt, completion = example["prompt"], example["completion"]
        if isinstance(prompt, list):  # conversational prompt/completion
            return _split_chat(prompt + completion, len(prompt), tokenizer)
        return prompt, completion + tokenizer.eos_token
    if fmt == "messages":
        messages = example["messages"]
        return _split_chat(messages, len(messages) - 1, tokenizer)
    raise ValueError(f"format {fmt!r} is not an SFT format")


def _split_chat(messages: Messages, n_prompt: int, tokenizer: PreTrainedTokenizerBase) -> tuple[str, str]:
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    prompt = tokenizer.apply_chat_template(messages[:n_prompt], tokenize=False, add_generation_prompt=True)
    if not full.startswith(prompt):
        raise ValueError("the chat template renders the prompt differently alone and in the conversation")
    return prompt, full[len(prompt) :]


def tokenize_sft(
    example: dict[str, Any], fmt: str, tokenizer: PreTrainedTokenizerBase, max_length: int, completion_only: bool
) -> dict[str, list[int]]:
    """Token ids and labels for one example; prompt labels are -100 when `completion_only`."""
    prompt, completion = prompt_and_completion(example, fmt, tokenizer)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    input_ids = (prompt_ids + completion_ids)[:max_length]
    labels = ([-100] * len(prompt_ids) if completion_only else list(prompt_ids)) + completion_ids
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels[:max_length]}


def tokenize_seq2seq_sft(
    example: dict[str, Any], fmt: str, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> dict[str, list[int]]:
    """Encoder input (the prompt, with the tokenizer's own special tokens, as generation reads it) and decoder
    labels (the completion and EOS), each cut to `max_length`."""
    if fmt == "text":
        raise ValueError("an encoder-decoder policy trains on prompt/completion or messages rows, not plain text")
    prompt, completion = prompt_and_completion(example, fmt, tokenizer)
    input_ids = tokenizer(prompt, truncation=True, max_length=max_length)["input_ids"]
    labels = tokenizer(completion, add_special_tokens=False)["input_ids"][:max_length]
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


def pack_blocks(batch: dict[str, list[list[int]]], block_size: int) -> dict[str, list[list[int]]]:
    """Concatenate examples and cut them into full blocks of `block_size` (no padding at all)."""
    packed: dict[str, list[list[int]]] = {}
    for key in ("input_ids", "labels"):
        stream = [token for sequence in batch[key] for token in sequence]
        usable = len(stream) // block_size * block_size
        packed[key] = [stream[i : i + block_size] for i in range(0, usable, block_size)]
    packed["attention_mask"] = [[1] * block_size for _ in packed["input_ids"]]
    return packed


def preference_texts(example: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> tuple[str, str]:
    """Full chosen and rejected texts, each with the shared prompt in front when there is one."""
    prompt = example.get("prompt")
    texts = []
    for side in ("chosen", "rejected"):
        answer = example[side]
        if isinstance(answer, list):
            conversation = (prompt if isinstance(prompt, list) else []) + answer
            texts.append(tokenizer.apply_chat_template(conversation, tokenize=False))
        else:
            texts.append((prompt or "") + answer)
    return texts[0], texts[1]


def tokenize_preference(example: dict[str, Any], tokenizer: PreTrainedTokenizerBase, max_length: int) -> dict:
    chosen, rejected = preference_texts(example, tokenizer)
    out = {}
    for side, text in (("chosen", chosen), ("rejected", rejected)):
        encoded = tokenizer(text, truncation=True, max_length=max_length)
        out[f"{side}_input_ids"] = encoded["input_ids"]
        out[f"{side}_attention_mask"] = encoded["attention_mask"]
    return out


@dataclass
class PreferenceCollator:
    """Pads chosen and rejected sequences to one common length so both go through one forward pass."""

    pad_token_id: int

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(f[f"{side}_input_ids"]) for f in features for side in ("chosen", "rejected"))
        batch = {}
        for side in ("chosen", "rejected"):
            ids = [f[f"{side}_input_ids"] for f in features]
            batch[f"{side}_input_ids"] = torch.tensor([x + [self.pad_token_id] * (width - len(x)) for x in ids])
            batch[f"{side}_attention_mask"] = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
        return batch


def prompt_text(example: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> str:
    """The generation prompt of a PPO/eval record: a string, or messages rendered for a reply."""
    prompt = example["prompt"] if "prompt" in example else example["messages"]
    if isinstance(prompt, list):
        return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return prompt
