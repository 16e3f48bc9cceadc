"""What valid prepared data looks like: one Great Expectations suite per dataset file, built in code.

Great Expectations is imported inside the functions: the import took 2.0 s on a 2-core CPU machine, a cost the
CLI and the flows should only pay when they validate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import great_expectations as gx

# Column roles: the Python type a JSON value must have, and which length bounds apply.
TEXT = "text"  # non-empty text, min_chars..max_chars
PROMPT = "prompt"  # non-empty prompt, min_chars..max_prompt_chars
CONTEXT = "context"  # a prompt that may be empty (preference pairs are unconditional), up to max_prompt_chars
LABEL = "label"  # a 0/1 integer
# Chat roles: a list of {"role", "content"} turns. Their checks run on columns derived from each row (see
# derived_columns): the turn roles in order, the shortest turn, the characters in all turns.
CHAT_PROMPT = "chat_prompt"  # turns ending with the user's, for the model to answer
CHAT_CONTEXT = "chat_context"  # a chat prompt that may have no turns (an unconditional preference pair)
CHAT = "chat"  # a whole conversation, ending with the assistant's turn
CHAT_REPLY = "chat_reply"  # the assistant's side after the row's `prompt` turns: prompt + reply is a conversation
CHAT_ROLES = (CHAT_PROMPT, CHAT_CONTEXT, CHAT, CHAT_REPLY)
NON_BLANK = r"\S"  # at least one non-whitespace character
_TURNS = r"(?:system,)?(?:user,assistant,)*user"
ROLE_PATTERNS = {
    CHAT_PROMPT: rf"^{_TURNS}$",
    CHAT_CONTEXT: rf"^(?:{_TURNS})?$",
    CHAT: rf"^{_TURNS},assistant$",
    CHAT_REPLY: rf"^{_TURNS},assistant$",
}


class ValidateConfig(BaseModel):
    """Bounds the prepared datasets must satisfy."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    min_chars: int = Field(1, ge=0)
    """Shortest allowed text or prompt, in characters."""
    max_chars: int = Field(4000, gt=0)
    """Longest allowed text (SFT excerpts, chosen/rejected, judge sentences), in characters."""
    max_prompt_chars: int = Field(300, gt=0)
    """Longest allowed prompt, in characters."""


@dataclass(frozen=True)
class FileSpec:
    """The columns of one dataset file and the row-level rules beyond per-column checks."""

    columns: dict[str, str]
    """Column name -> role (TEXT, PROMPT, CONTEXT, LABEL or a chat role); the file must have exactly these."""
    unique: tuple[str, ...]
    """Columns whose combined values must not repeat (no duplicate rows)."""
    distinct_within_row: tuple[str, ...] = ()
    """Columns that must differ from each other in every row."""
    disjoint_from: str | None = None
    """Another file whose values in the `unique` column must not appear in this one (no leakage)."""


# The format of each file (data/prepared/manifest.json) -> its spec; `chat` when the rows hold messages.
def file_spec(name: str, fmt: str, first_row: dict[str, Any]) -> FileSpec:
    """The spec of prepared file `name` in format `fmt`; plain or chat as its first row is (the rest must agree)."""
    chat = {column: isinstance(value, list) for column, value in first_row.items()}
    if fmt == "text":
        return FileSpec({"text": TEXT}, unique=("text",))
    if fmt == "messages":
        return FileSpec({"messages": CHAT}, unique=("messages",))
    if fmt == "prompt_completion":
        if chat.get("prompt") or chat.get("completion"):
            return FileSpec({"prompt": CHAT_PROMPT, "completion": CHAT_REPLY}, unique=("prompt", "completion"))
        return FileSpec({"prompt": PROMPT, "completion": TEXT}, unique=("prompt", "completion"))
    if fmt == "preference":
        # A chat prompt needs chat answers and the other way round: mixing them fails the type checks.
        conversational = chat.get("chosen") or chat.get("prompt")
        answer = CHAT_REPLY if conversational else TEXT
        prompt = CHAT_CONTEXT if conversational else CONTEXT
        return FileSpec(
            {"prompt": prompt, "chosen": answer, "rejected": answer},
            unique=("prompt", "chosen", "rejected"),
            distinct_within_row=("chosen", "rejected"),
        )
    if fmt == "prompt":
        columns = {"prompt": CHAT_PROMPT if chat.get("prompt") else PROMPT}
        if "reference" in first_row:
            columns["reference"] = TEXT
        # Evaluation prompts never appear among the PPO prompts the policy trained on.
        leak = "ppo_prompts.jsonl" if name == "eval_prompts.jsonl" else None
        return FileSpec(columns, unique=("prompt",), disjoint_from=leak)
    if fmt == "labelled":
        # Unique text (not text+label): one sentence with two labels is as bad as a repeated row.
        leak = "judge_train.jsonl" if name == "judge_test.jsonl" else None
        return FileSpec({"text": TEXT, "label": LABEL}, unique=("text",), disjoint_from=leak)
    raise ValueError(f"{name}: unknown format {fmt!r}")


def json_type_ok(value: Any, role: str) -> bool:
    """Whether a parsed JSON value has the type its column's role needs (JSON true/false is not a label)."""
    if role == LABEL:
        return isinstance(value, int) and not isinstance(value, bool)
    if role in CHAT_ROLES:
        return isinstance(value, list) and all(
            isinstance(turn, dict) and isinstance(turn.get("role"), str) and isinstance(turn.get("content"), str)
            for turn in value
        )
    return isinstance(value, str)


def key_column(column: str, spec: FileSpec) -> str:
    """The column that holds comparable values: the column itself, or a chat column's JSON text."""
    return f"{column}.json" if spec.columns.get(column) in CHAT_ROLES else column


def add_derived_columns(frame: pd.DataFrame, spec: FileSpec) -> pd.DataFrame:
    """For each chat column: its JSON text (for uniqueness and leakage), the turn roles in order (with the row's
    prompt turns in front of a reply), the shortest turn and all turns' characters."""
    frame = frame.copy()
    for column, role in spec.columns.items():
        if role not in CHAT_ROLES:
            continue
        # Derived even for a missing column (all null), so the column-set check names only the column itself.
        values = frame[column] if column in frame else pd.Series([None] * len(frame), index=frame.index)
        before = frame["prompt"] if role == CHAT_REPLY and "prompt" in frame else None
        turns = [
            (list(before.loc[index]) if before is not None and isinstance(before.loc[index], list) else []) + value
            if isinstance(value, list)
            else None
            for index, value in values.items()
        ]
        frame[f"{column}.json"] = [json.dumps(v, sort_keys=True) if isinstance(v, list) else None for v in values]
        frame[f"{column}.roles"] = [",".join(t["role"] for t in row) if row is not None else None for row in turns]
        frame[f"{column}.shortest_turn"] = [
            min((len(t["content"].strip()) for t in v), default=1) if isinstance(v, list) else None for v in values
        ]
        frame[f"{column}.chars"] = [sum(len(t["content"]) for t in v) if isinstance(v, list) else None for v in values]
    return frame


def build_suite(
    name: str, spec: FileSpec, cfg: ValidateConfig, forbidden: list[Any], max_prompt_tokens: int | None = None
) -> gx.ExpectationSuite:
    """The suite for file `name`; `forbidden` holds the values of `spec.disjoint_from` that must not reappear;
    with `max_prompt_tokens`, the derived `prompt.tokens` column must stay within it."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    derived = [
        f"{column}.{part}"
        for column, role in spec.columns.items()
        if role in CHAT_ROLES
        for part in ("json", "roles", "shortest_turn", "chars")
    ]
    if max_prompt_tokens is not None:
        derived.append("prompt.tokens")
    expectations: list[gxe.Expectation] = [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(spec.columns) + derived, exact_match=True)
    ]
    if max_prompt_tokens is not None:
        expectations.append(gxe.ExpectColumnValuesToBeBetween(column="prompt.tokens", max_value=max_prompt_tokens))
    for column, role in spec.columns.items():
        expectations += [gxe.ExpectColumnToExist(column=column), gxe.ExpectColumnValuesToNotBeNull(column=column)]
        if role == LABEL:
            expectations.append(gxe.ExpectColumnValuesToBeInSet(column=column, value_set=[0, 1]))
            continue
        if role in CHAT_ROLES:
            expectations += _chat_expectations(column, role, cfg)
            continue
        if role == CONTEXT:
            low, high = 0, cfg.max_prompt_chars
        else:
            low, high = cfg.min_chars, cfg.max_chars if role == TEXT else cfg.max_prompt_chars
            expectations.append(gxe.ExpectColumnValuesToMatchRegex(column=column, regex=NON_BLANK))
        expectations.append(gxe.ExpectColumnValueLengthsToBeBetween(column=column, min_value=low, max_value=high))

    keys = [key_column(column, spec) for column in spec.unique]
    if len(keys) == 1:
        expectations.append(gxe.ExpectColumnValuesToBeUnique(column=keys[0]))
    else:
        expectations.append(gxe.ExpectCompoundColumnsToBeUnique(column_list=keys))
    if spec.distinct_within_row:
        # Native on pandas, so no helper column: the row's values must be unique, i.e. chosen != rejected.
        columns = [key_column(column, spec) for column in spec.distinct_within_row]
        expectations.append(gxe.ExpectSelectColumnValuesToBeUniqueWithinRecord(column_list=columns))
    if spec.disjoint_from:
        expectations.append(gxe.ExpectColumnValuesToNotBeInSet(column=keys[0], value_set=forbidden))
    return gx.ExpectationSuite(name=name, expectations=expectations)


def _chat_expectations(column: str, role: str, cfg: ValidateConfig) -> list[Any]:
    """Turn roles in a valid order, no empty turn, and the turns' characters within bounds."""
    import great_expectations.expectations as gxe

    high = cfg.max_prompt_chars if role in (CHAT_PROMPT, CHAT_CONTEXT) else cfg.max_chars
    low = 0 if role == CHAT_CONTEXT else cfg.min_chars
    return [
        gxe.ExpectColumnValuesToMatchRegex(column=f"{column}.roles", regex=ROLE_PATTERNS[role]),
        gxe.ExpectColumnValuesToBeBetween(column=f"{column}.shortest_turn", min_value=1),
        gxe.ExpectColumnValuesToBeBetween(column=f"{column}.chars", min_value=low, max_value=high),
    ]
