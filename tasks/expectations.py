"""What valid prepared data looks like: one Great Expectations suite per dataset file, built in code.

Great Expectations is imported inside the functions: the import took 2.0 s on a 2-core CPU machine, a cost the
CLI and the flows should only pay when they validate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    import great_expectations as gx

# Column roles: the Python type a JSON value must have, and which length bounds apply.
TEXT = "text"  # non-empty text, min_chars..max_chars
PROMPT = "prompt"  # non-empty prompt, min_chars..max_prompt_chars
CONTEXT = "context"  # a prompt that may be empty (preference pairs are unconditional), up to max_prompt_chars
LABEL = "label"  # a 0/1 integer
NON_BLANK = r"\S"  # at least one non-whitespace character


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
    """Column name -> role (TEXT, PROMPT, CONTEXT or LABEL); the file must have exactly these columns."""
    unique: tuple[str, ...]
    """Columns whose combined values must not repeat (no duplicate rows)."""
    distinct_within_row: tuple[str, ...] = ()
    """Columns that must differ from each other in every row."""
    disjoint_from: str | None = None
    """Another file whose values in the `unique` column must not appear in this one (no leakage)."""


FILE_SPECS: dict[str, FileSpec] = {
    "sft.jsonl": FileSpec({"text": TEXT}, unique=("text",)),
    "preference.jsonl": FileSpec(
        {"prompt": CONTEXT, "chosen": TEXT, "rejected": TEXT},
        unique=("prompt", "chosen", "rejected"),
        distinct_within_row=("chosen", "rejected"),
    ),
    "ppo_prompts.jsonl": FileSpec({"prompt": PROMPT}, unique=("prompt",)),
    "eval_prompts.jsonl": FileSpec({"prompt": PROMPT}, unique=("prompt",), disjoint_from="ppo_prompts.jsonl"),
    # Unique text (not text+label): one sentence with two labels is as bad as a repeated row.
    "judge_train.jsonl": FileSpec({"text": TEXT, "label": LABEL}, unique=("text",)),
    "judge_test.jsonl": FileSpec({"text": TEXT, "label": LABEL}, unique=("text",), disjoint_from="judge_train.jsonl"),
}


def json_type_ok(value: Any, role: str) -> bool:
    """Whether a parsed JSON value has the type its column's role needs (JSON true/false is not a label)."""
    if role == LABEL:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, str)


def build_suite(name: str, spec: FileSpec, cfg: ValidateConfig, forbidden: list[Any]) -> gx.ExpectationSuite:
    """The suite for file `name`; `forbidden` holds the values of `spec.disjoint_from` that must not reappear."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    expectations: list[gxe.Expectation] = [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(spec.columns), exact_match=True)
    ]
    for column, role in spec.columns.items():
        expectations += [gxe.ExpectColumnToExist(column=column), gxe.ExpectColumnValuesToNotBeNull(column=column)]
        if role == LABEL:
            expectations.append(gxe.ExpectColumnValuesToBeInSet(column=column, value_set=[0, 1]))
            continue
        if role == CONTEXT:
            low, high = 0, cfg.max_prompt_chars
        else:
            low, high = cfg.min_chars, cfg.max_chars if role == TEXT else cfg.max_prompt_chars
            expectations.append(gxe.ExpectColumnValuesToMatchRegex(column=column, regex=NON_BLANK))
        expectations.append(gxe.ExpectColumnValueLengthsToBeBetween(column=column, min_value=low, max_value=high))

    if len(spec.unique) == 1:
        expectations.append(gxe.ExpectColumnValuesToBeUnique(column=spec.unique[0]))
    else:
        expectations.append(gxe.ExpectCompoundColumnsToBeUnique(column_list=list(spec.unique)))
    if spec.distinct_within_row:
        # Native on pandas, so no helper column: the row's values must be unique, i.e. chosen != rejected.
        expectations.append(
            gxe.ExpectSelectColumnValuesToBeUniqueWithinRecord(column_list=list(spec.distinct_within_row))
        )
    if spec.disjoint_from:
        expectations.append(gxe.ExpectColumnValuesToNotBeInSet(column=spec.unique[0], value_set=forbidden))
    return gx.ExpectationSuite(name=name, expectations=expectations)
