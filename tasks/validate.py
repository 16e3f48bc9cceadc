"""Validate stage: check the prepared JSON-lines files with Great Expectations and report what failed.

data/prepared/manifest.json (written by `prepare`) gives each file's format; a file the task does not use
(format null) is not checked. Each file is first read by hand, line by line, because problems below the table
level (no bytes, bytes that are not UTF-8, lines that are not JSON objects, values of the wrong JSON type) would
otherwise crash the reader or be silently coerced by pandas. Those become failed checks with the line numbers;
the rows that parse cleanly then go through the file's suite (see tasks/expectations.py) in an ephemeral GX
context.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from rlhf_lib.data.formats import prompt_text
from rlhf_lib.io import atomic_write_json
from tasks.expectations import (
    CHAT_ROLES,
    LABEL,
    FileSpec,
    ValidateConfig,
    add_derived_columns,
    build_suite,
    file_spec,
    json_type_ok,
    key_column,
)
from tasks.prepare import MANIFEST

PROMPT_FILES = ("ppo_prompts.jsonl", "eval_prompts.jsonl")

SAMPLES = 5
"""Offending values or rows kept per failed check."""


@dataclass
class FailedCheck:
    """One expectation that did not hold for one file."""

    expectation: str
    column: str | None
    unexpected_count: int
    samples: list[Any]
    """Up to SAMPLES offending values, each with the (1-based) line it came from where there is one."""


@dataclass
class FileReport:
    rows: int = 0
    """Rows that parsed and went through the GX suite."""
    expectations: int = 0
    """GX expectations evaluated (0 when the file could not be read)."""
    failed: list[FailedCheck] = field(default_factory=list)


@dataclass
class ValidationReport:
    files: dict[str, FileReport]

    @property
    def success(self) -> bool:
        return not any(report.failed for report in self.files.values())

    def failures(self) -> list[tuple[str, FailedCheck]]:
        return [(name, check) for name, report in self.files.items() for check in report.failed]

    def to_dict(self) -> dict[str, Any]:
        return {"success": self.success, "files": {name: asdict(report) for name, report in self.files.items()}}

    def to_markdown(self) -> str:
        lines = [
            f"# Data validation: {'passed' if self.success else 'FAILED'}",
            "",
            "| file | rows | expectations | failed |",
            "|---|---:|---:|---:|",
        ]
        lines += [f"| {name} | {r.rows} | {r.expectations} | {len(r.failed)} |" for name, r in self.files.items()]
        for name, check in self.failures():
            column = f" on `{check.column}`" if check.column else ""
            samples = "; ".join(f"`{json.dumps(sample)[:120]}`" for sample in check.samples)
            lines.append(f"- **{name}**: `{check.expectation}`{column}, {check.unexpected_count} unexpected: {samples}")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class PromptLimit:
    """Prompts longer than `max_tokens` under the policy's tokenizer would be cut before PPO or evaluation sees
    them (the policy keeps the end of a long prompt), so validation refuses them."""

    tokenizer: Any
    max_tokens: int


class DataValidationError(ValueError):
    """Prepared data failed validation; `report` holds every failed check."""

    def __init__(self, report: ValidationReport, report_path: Path | None = None) -> None:
        self.report = report
        problems = [
            f"{name}: {check.expectation}"
            + (f" ({check.column})" if check.column else "")
            + f", {check.unexpected_count} unexpected, e.g. {json.dumps(check.samples[:1])[:160]}"
            for name, check in report.failures()
        ]
        where = f" (full report: {report_path})" if report_path else ""
        super().__init__(f"data validation failed{where}:\n  " + "\n  ".join(problems))


def validate_datasets(data_dir: Path, cfg: ValidateConfig, prompt_limit: PromptLimit | None = None) -> ValidationReport:
    """Read every prepared file in `data_dir` and run its expectation suite; never raises on bad data.

    With `prompt_limit`, PPO and evaluation prompts must also fit its token budget.
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    frames: dict[str, pd.DataFrame | None] = {}
    specs: dict[str, FileSpec] = {}
    files: dict[str, FileReport] = {}
    manifest_path = Path(data_dir) / MANIFEST
    if not manifest_path.is_file():
        return ValidationReport(
            {MANIFEST: FileReport(failed=[FailedCheck("expect_file_to_exist", None, 1, [str(manifest_path)])])}
        )
    for name, fmt in json.loads(manifest_path.read_text()).items():
        if fmt is None:
            continue  # the task does not use this file
        frame, failed, spec = read_jsonl(Path(data_dir) / name, name, fmt)
        frames[name] = add_derived_columns(frame, spec) if frame is not None else None
        if frame is not None and prompt_limit is not None and name in PROMPT_FILES:
            frames[name]["prompt.tokens"] = [_prompt_tokens(row, prompt_limit) for row in frame.to_dict("records")]
        specs[name], files[name] = spec, FileReport(failed=failed)

    context = gx.get_context(mode="ephemeral")
    # Otherwise every validation draws a tqdm bar per metric into the stage's log.
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    datasource = context.data_sources.add_pandas("prepared")
    for name, spec in specs.items():
        frame = frames[name]
        if frame is None:
            continue
        other = frames.get(spec.disjoint_from) if spec.disjoint_from else None
        column = key_column(spec.unique[0], spec)
        forbidden = other[column].dropna().tolist() if other is not None and column in other else []
        max_tokens = prompt_limit.max_tokens if prompt_limit is not None and name in PROMPT_FILES else None
        suite = context.suites.add(build_suite(name, spec, cfg, forbidden, max_tokens))
        batch = (
            datasource.add_dataframe_asset(name)
            .add_batch_definition_whole_dataframe("whole")
            .get_batch(batch_parameters={"dataframe": frame})
        )
        result = batch.validate(suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": SAMPLES})
        files[name].rows = len(frame)
        files[name].expectations = len(result.results)
        files[name].failed += _gx_failures(result.results, set(frame.columns))
    return ValidationReport(files)


def require_valid(
    data_dir: Path, cfg: ValidateConfig, report_path: Path | None = None, prompt_limit: PromptLimit | None = None
) -> ValidationReport:
    """Validate and write the report JSON; raise DataValidationError on failure.

    A passing report goes to `report_path`; a failing one beside it (`failed_report_path`), so the last
    good run's report, a pipeline output, is never overwritten by a failed one.
    """
    report = validate_datasets(data_dir, cfg, prompt_limit)
    if report_path is not None:
        failed_path = failed_report_path(report_path)
        if report.success:
            atomic_write_json(report_path, report.to_dict())
            failed_path.unlink(missing_ok=True)
        else:
            atomic_write_json(failed_path, report.to_dict())
    if not report.success:
        raise DataValidationError(report, failed_report_path(report_path) if report_path else None)
    return report


def _prompt_tokens(row: dict[str, Any], limit: PromptLimit) -> int | None:
    """Tokens of the prompt as the policy will see it (chat prompts rendered); None when it cannot be rendered,
    which the role checks report."""
    try:
        text = prompt_text(row, limit.tokenizer)
    except Exception:  # a malformed conversation: expect_column_values_to_match_regex on its roles names it
        return None
    return len(limit.tokenizer(text, add_special_tokens=False)["input_ids"])


def failed_report_path(report_path: Path) -> Path:
    """Where a failing validation's report goes: reports/validation.json -> reports/validation.failed.json."""
    return report_path.with_suffix(".failed.json")


def read_jsonl(path: Path, name: str, fmt: str) -> tuple[pd.DataFrame | None, list[FailedCheck], FileSpec]:
    """Parse a JSON-lines file into a frame indexed by line number, the checks that failed while reading, and the
    file's spec (plain or chat as its first row is).

    Lines that are not UTF-8, not a JSON object, or hold a value of the wrong type for a spec column are
    reported and left out of the frame; the frame is None when no line parsed.
    """
    if not path.is_file():
        return None, [FailedCheck("expect_file_to_exist", None, 1, [str(path)])], file_spec(name, fmt, {})
    raw = path.read_bytes()
    if not raw.strip():
        return (
            None,
            [FailedCheck("expect_file_to_be_non_empty", None, 1, [{"bytes": len(raw)}])],
            file_spec(name, fmt, {}),
        )

    parsed: list[tuple[int, dict[str, Any]]] = []
    not_utf8: list[dict[str, Any]] = []
    not_json: list[dict[str, Any]] = []
    offset = 0
    for number, line in enumerate(raw.split(b"\n"), start=1):
        start, offset = offset, offset + len(line) + 1
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            bad = line[err.start : err.end].hex()
            not_utf8.append({"line": number, "byte_offset": start + err.start, "bytes": bad})
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            not_json.append({"line": number, "error": f"{err.msg} at column {err.colno}", "text": text[:80]})
            continue
        if not isinstance(record, dict):
            not_json.append(
                {"line": number, "error": f"a JSON {type(record).__name__}, not an object", "text": text[:80]}
            )
            continue
        parsed.append((number, record))

    spec = file_spec(name, fmt, parsed[0][1] if parsed else {})
    records: list[dict[str, Any]] = []
    line_numbers: list[int] = []
    wrong_type: dict[str, list[dict[str, Any]]] = {column: [] for column in spec.columns}
    for number, record in parsed:
        # Nulls are left to GX's not-null expectation, which reports them with the other column checks.
        wrong = [
            c for c, role in spec.columns.items() if record.get(c) is not None and not json_type_ok(record[c], role)
        ]
        for column in wrong:
            wrong_type[column].append({"line": number, "value": record[column]})
        if not wrong:
            records.append(record)
            line_numbers.append(number)

    failed = []
    if not_utf8:
        failed.append(FailedCheck("expect_file_to_be_utf8", None, len(not_utf8), not_utf8[:SAMPLES]))
    if not_json:
        failed.append(FailedCheck("expect_lines_to_be_json_objects", None, len(not_json), not_json[:SAMPLES]))
    for column, bad in wrong_type.items():
        if bad:
            kind = {LABEL: "integer"}.get(
                spec.columns[column], "messages" if spec.columns[column] in CHAT_ROLES else "string"
            )
            failed.append(FailedCheck(f"expect_column_values_to_be_json_{kind}", column, len(bad), bad[:SAMPLES]))
    frame = pd.DataFrame.from_records(records, index=line_numbers) if records else None
    return frame, failed, spec


def _gx_failures(results: list[Any], columns: set[str]) -> list[FailedCheck]:
    """Turn failed GX expectation results into FailedChecks with line-numbered samples."""
    failed = []
    for outcome in results:
        if outcome.success:
            continue
        config = outcome.expectation_config
        needed = [config.kwargs["column"]] if "column" in config.kwargs else list(config.kwargs.get("column_list", []))
        # A missing column is reported once, by expect_column_to_exist; the checks on it only add GX exceptions.
        if config.type != "expect_column_to_exist" and not set(needed) <= columns:
            continue
        result = _plain(outcome.to_json_dict()["result"])
        error = _exception_message(outcome.exception_info)
        if error:
            count, samples = 1, [{"exception": error}]
        elif "partial_unexpected_index_list" in result:
            count = result["unexpected_count"]
            pairs = zip(result["partial_unexpected_index_list"], result["partial_unexpected_list"], strict=False)
            samples = [{"line": line, "value": value} for line, value in pairs]
        elif "details" in result:  # column-set mismatch: which columns are missing or unexpected
            mismatch = result["details"]["mismatched"]
            count, samples = sum(len(names) for names in mismatch.values()), [mismatch]
        else:  # expect_column_to_exist reports no result: show the columns that were there
            count, samples = 1, [{"columns_found": sorted(columns)}]
        failed.append(FailedCheck(config.type, ",".join(needed) or None, count, samples[:SAMPLES]))
    return failed


def _exception_message(info: dict[str, Any]) -> str | None:
    # GX gives either one flat record or one record per failed metric, keyed by the metric's id.
    records = [info] if "raised_exception" in info else list(info.values())
    messages = [str(record.get("exception_message")) for record in records if record.get("raised_exception")]
    return "; ".join(messages) or None


def _plain(value: Any) -> Any:
    """Replace NaN (pandas' stand-in for a key missing from a row) by None, so the report stays valid JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value
