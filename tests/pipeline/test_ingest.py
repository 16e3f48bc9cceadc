"""Ingesting data in the TRL formats from files, folders and mapped columns; bad user data stopped by `validate`
naming the expectation it breaks."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pandas as pd
import pytest

from rlhf_lib.config import ConfigError, build_config
from tasks.expectations import ValidateConfig
from tasks.prepare import MANIFEST, PrepareConfig, prepare_datasets
from tasks.validate import validate_datasets

CUSTOM = Path(__file__).resolve().parents[2] / "recipes" / "custom" / "data"


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (CUSTOM / name).read_text().splitlines()]


def _write(path: Path, rows: list[dict]) -> str:
    """`rows` as a file of the kind the suffix names (jsonl, csv, parquet) or a saved dataset folder."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif path.suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    elif path.suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path)
    else:
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return str(path)


def _prepare(tmp_path: Path, **sources) -> tuple[Path, dict]:
    """Prepare with `sources` (the custom recipe's prompts unless given) and validate; (out_dir, report)."""
    sources.setdefault("prompts", {"source": str(CUSTOM / "prompts.jsonl"), "format": "prompt"})
    sources.setdefault("evaluation_count", 4)
    cfg = build_config(PrepareConfig, sources, "prepare")
    out_dir = tmp_path / "prepared"
    prepare_datasets(cfg, out_dir)
    return out_dir, validate_datasets(out_dir, ValidateConfig())


QUESTIONS = [{"question": f"What is {a} plus {b}?", "answer": f"It is {a + b}."} for a in range(5) for b in range(4)]
TEXTS = [{"text": f"{row['question']} {row['answer']}"} for row in QUESTIONS]
CHAT_PC = [
    {
        "prompt": [{"role": "user", "content": r["question"]}],
        "completion": [{"role": "assistant", "content": r["answer"]}],
    }
    for r in QUESTIONS
]
PLAIN_PREFERENCE = [{"chosen": f"{r['question']} {r['answer']}", "rejected": f"{r['question']} No."} for r in QUESTIONS]
PROMPTED_PREFERENCE = [{"prompt": r["question"], "chosen": r["answer"], "rejected": "No."} for r in QUESTIONS]


@pytest.mark.parametrize(
    ("key", "rows", "fmt", "columns", "suffix"),
    [
        ("sft", TEXTS, "text", {}, ".parquet"),
        ("sft", QUESTIONS, "prompt_completion", {"prompt": "question", "completion": "answer"}, ".csv"),
        ("sft", CHAT_PC, "prompt_completion", {}, ".jsonl"),
        ("sft", _rows("sft_messages.jsonl"), "messages", {}, "_folder"),
        ("preference", PLAIN_PREFERENCE, "preference", {}, ".csv"),
        ("preference", PROMPTED_PREFERENCE, "preference", {}, ".parquet"),
        ("preference", _rows("preference_chat.jsonl"), "preference", {}, ".jsonl"),
        ("prompts", [{"prompt": r["question"]} for r in QUESTIONS], "prompt", {}, "_folder"),
    ],
    ids=[
        "text-parquet",
        "pc-csv-mapped",
        "pc-chat-jsonl",
        "messages-folder",
        "pref-plain-csv",
        "pref-prompt-parquet",
        "pref-chat-jsonl",
        "prompts-folder",
    ],
)
def test_each_format_from_each_kind_of_source_is_ingested_and_valid(tmp_path, key, rows, fmt, columns, suffix):
    source = _write(tmp_path / f"source{suffix}", rows)
    sft = {"source": str(CUSTOM / "sft_messages.jsonl"), "format": "messages"}
    spec = {"source": source, "format": fmt, "columns": columns}
    out_dir, report = _prepare(tmp_path, **({"sft": sft} | {key: spec}))
    assert report.success, report.to_markdown()
    file = {"sft": "sft.jsonl", "preference": "preference.jsonl", "prompts": "ppo_prompts.jsonl"}[key]
    written = [json.loads(line) for line in (out_dir / file).read_text().splitlines()]
    mapping = {theirs: ours for ours, theirs in columns.items()}
    expected = [{mapping.get(k, k): v for k, v in row.items()} for row in rows]
    if key == "preference":
        expected = [{"prompt": [] if isinstance(row["chosen"], list) else "", **row} for row in expected]
    if key == "prompts":  # evaluation_count of them were held out
        assert len(written) + 4 == len(expected) and all(row in expected for row in written)
    else:
        assert sorted(map(json.dumps, written)) == sorted(map(json.dumps, expected))  # same rows, seeded order
    assert json.loads((out_dir / MANIFEST).read_text())[file] == fmt


def test_held_out_prompts_are_a_seeded_disjoint_split(tmp_path):
    sft = {"source": str(CUSTOM / "sft_messages.jsonl"), "format": "messages"}
    first, _ = _prepare(tmp_path / "a", sft=sft)
    again, _ = _prepare(tmp_path / "b", sft=sft)
    other, _ = _prepare(tmp_path / "c", sft=sft, seed=1)
    read = lambda d, f: (d / f).read_text()  # noqa: E731
    assert read(first, "eval_prompts.jsonl") == read(again, "eval_prompts.jsonl")
    assert read(first, "eval_prompts.jsonl") != read(other, "eval_prompts.jsonl")
    held_out = set(read(first, "eval_prompts.jsonl").splitlines())
    assert len(held_out) == 4 and not held_out & set(read(first, "ppo_prompts.jsonl").splitlines())


def _turns(*pairs: tuple[str, str]) -> list[dict]:
    return [{"role": role, "content": content} for role, content in pairs]


GOOD = _turns(("user", "What is one plus one?"), ("assistant", "Two."))
BAD_DATA = [
    # a format that does not match its declared kind: plain texts declared as chat messages (their `text` column
    # is dropped on the way in, so no row has `messages`)
    ("sft", TEXTS, "messages", "expect_column_to_exist", "messages"),
    # mixed formats in one file: chat rows, then plain texts, which have no `messages`
    ("sft", [{"messages": GOOD}] + TEXTS[:3], "messages", "expect_column_values_to_not_be_null", "messages"),
    # malformed chat turns
    (
        "sft",
        [{"messages": _turns(("assistant", "Hi."), ("user", "What?"))}],
        "messages",
        "expect_column_values_to_match_regex",
        "messages.roles",
    ),
    (
        "sft",
        [{"messages": _turns(("user", "Hi?"), ("assistant", "  "))}],
        "messages",
        "expect_column_values_to_be_between",
        "messages.shortest_turn",
    ),
    (
        "sft",
        [{"messages": [{"role": "user", "text": "Hi?"}]}],
        "messages",
        "expect_column_values_to_be_json_messages",
        "messages",
    ),
    (
        "sft",
        [{"messages": _turns(("user", "Hi?"), ("robot", "Beep."))}],
        "messages",
        "expect_column_values_to_match_regex",
        "messages.roles",
    ),
    # conversational preferences: the same answer twice, and a duplicated pair
    (
        "preference",
        [{"prompt": GOOD[:1], "chosen": GOOD[1:], "rejected": GOOD[1:]}],
        "preference",
        "expect_select_column_values_to_be_unique_within_record",
        "chosen.json,rejected.json",
    ),
    (
        "preference",
        _rows("preference_chat.jsonl")[:2] * 2,
        "preference",
        "expect_compound_columns_to_be_unique",
        "prompt.json,chosen.json,rejected.json",
    ),
    (
        "preference",
        [{"prompt": GOOD[:1], "chosen": GOOD, "rejected": GOOD[1:]}],
        "preference",
        "expect_column_values_to_match_regex",
        "chosen.roles",
    ),
]


@pytest.mark.parametrize(
    ("key", "rows", "fmt", "expectation", "column"),
    BAD_DATA,
    ids=[
        "declared-messages-got-text",
        "mixed-formats",
        "assistant-first",
        "empty-turn",
        "turn-without-content",
        "unknown-role",
        "chosen-equals-rejected",
        "duplicated-pair",
        "reply-repeats-the-prompt",
    ],
)
def test_bad_user_data_is_stopped_by_validate_naming_the_expectation(tmp_path, key, rows, fmt, expectation, column):
    base = {"sft": {"source": str(CUSTOM / "sft_messages.jsonl"), "format": "messages"}}
    source = _write(tmp_path / "bad.jsonl", rows)
    _, report = _prepare(tmp_path, **(base | {key: {"source": source, "format": fmt}}))
    file = {"sft": "sft.jsonl", "preference": "preference.jsonl"}[key]
    failed = {(check.expectation, check.column) for check in report.files[file].failed}
    assert (expectation, column) in failed, report.to_markdown()
    assert [name for name, r in report.files.items() if r.failed] == [file]


def test_evaluation_prompts_leaking_into_ppo_prompts_are_caught(tmp_path):
    leaked = tmp_path / "eval.jsonl"
    _write(leaked, [{"prompt": _rows("prompts.jsonl")[0]["prompt"], "reference": "x"}] + _rows("eval.jsonl")[1:])
    sft = {"source": str(CUSTOM / "sft_messages.jsonl"), "format": "messages"}
    _, report = _prepare(tmp_path, sft=sft, evaluation={"source": str(leaked), "format": "prompt"})
    failed = {(check.expectation, check.column) for check in report.files["eval_prompts.jsonl"].failed}
    assert ("expect_column_values_to_not_be_in_set", "prompt.json") in failed


def test_config_problems_fail_before_anything_is_written(tmp_path):
    sft = {"source": str(CUSTOM / "sft_question_answer.csv"), "format": "prompt_completion"}
    with pytest.raises(ConfigError, match=r"prepare\.sft\.columns: \{'prompt': 'query'\} name columns"):
        _prepare(tmp_path, sft=sft | {"columns": {"prompt": "query", "completion": "answer"}})
    with pytest.raises(ConfigError, match=r"prepare\.sft\.source: file not found"):
        _prepare(tmp_path, sft=sft | {"source": str(tmp_path / "nope.jsonl")})
    with pytest.raises(ConfigError, match="sft.format: 'preference' is not one of"):
        _prepare(tmp_path, sft=sft | {"format": "preference"})
    assert not (tmp_path / "prepared").exists()


@pytest.mark.parametrize(
    ("key", "spec"),
    [
        ("sft", {"source": "sft_text.jsonl", "format": "text"}),
        (
            "sft",
            {
                "source": "sft_question_answer.csv",
                "format": "prompt_completion",
                "columns": {"prompt": "question", "completion": "answer"},
            },
        ),
        ("sft", {"source": "sft_messages.jsonl", "format": "messages"}),
        ("preference", {"source": "preference_plain.csv", "format": "preference"}),
        ("preference", {"source": "preference_chat.jsonl", "format": "preference"}),
        ("evaluation", {"source": "eval.jsonl", "format": "prompt"}),
    ],
    ids=["text", "prompt-completion-mapped", "messages", "preference-plain", "preference-chat", "eval-references"],
)
def test_the_custom_recipes_example_files_are_valid(tmp_path, key, spec):
    sft = {"source": str(CUSTOM / "sft_messages.jsonl"), "format": "messages"}
    _, report = _prepare(tmp_path, **({"sft": sft} | {key: spec | {"source": str(CUSTOM / spec["source"])}}))
    assert report.success, report.to_markdown()


def test_prompts_longer_than_the_ppo_budget_fail_validation(tmp_path, tiny_lm_dir):
    from rlhf_lib.config import ModelConfig
    from rlhf_lib.models.loading import load_tokenizer
    from tasks.validate import PromptLimit

    sft = {"source": str(CUSTOM / "sft_messages.jsonl"), "format": "messages"}
    out_dir, _ = _prepare(tmp_path, sft=sft)
    tokenizer = load_tokenizer(ModelConfig(name_or_path=tiny_lm_dir))
    assert validate_datasets(out_dir, ValidateConfig(), PromptLimit(tokenizer, 64)).success
    report = validate_datasets(out_dir, ValidateConfig(), PromptLimit(tokenizer, 5))
    for name in ("ppo_prompts.jsonl", "eval_prompts.jsonl"):
        failed = {(check.expectation, check.column) for check in report.files[name].failed}
        assert ("expect_column_values_to_be_between", "prompt.tokens") in failed


def test_extra_columns_are_dropped_and_mappings_are_checked(tmp_path):
    rows = [{"id": i, "question": r["question"], "answer": r["answer"], "prompt": "x"} for i, r in enumerate(QUESTIONS)]
    source = _write(tmp_path / "qa.jsonl", rows)
    spec = {"source": source, "format": "prompt_completion", "columns": {"prompt": "question", "completion": "answer"}}
    with pytest.raises(ConfigError, match=r"already has column\(s\) \['prompt'\], which the mapping would overwrite"):
        _prepare(tmp_path, sft=spec)
    _write(tmp_path / "qa.jsonl", [{k: v for k, v in row.items() if k != "prompt"} for row in rows])
    out_dir, report = _prepare(tmp_path, sft=spec)
    assert report.success, report.to_markdown()
    assert all(set(json.loads(line)) == {"prompt", "completion"} for line in (out_dir / "sft.jsonl").open())
    with pytest.raises(ConfigError, match=r"\['promt'\] are not columns of format 'prompt_completion'"):
        _prepare(tmp_path, sft=spec | {"columns": {"promt": "question"}})
    (tmp_path / "array.jsonl").write_text('["not", "an", "object"]\n')
    with pytest.raises(ConfigError, match="array.jsonl:1 is a JSON list, not an object"):
        _prepare(tmp_path, sft={"source": str(tmp_path / "array.jsonl"), "format": "text"})
