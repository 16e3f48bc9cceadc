"""Tools for tool-use rollouts: the calculator's own arithmetic, BM25 search, and failures kept from the run."""

from __future__ import annotations

import time

import pytest

from rlhf_lib.tools import CALCULATOR, BM25Search, Tool, ToolBox, calculate


def test_calculator_computes_arithmetic_and_refuses_anything_else():
    assert calculate("12 * (3 + 4)") == "84"
    assert calculate(" -7 // 2 + 10 % 4 ") == str(-7 // 2 + 10 % 4)
    assert calculate("2 ** 10 / 4") == "256"
    assert calculate("1 / 3") == "0.333333"
    for text in ["__import__('os').system('true')", "x + 1", "open('f')", "(1).real", "'a' * 3", "9 ** 9 ** 9"]:
        with pytest.raises(ValueError):
            calculate(text)
    with pytest.raises(ValueError, match="not an arithmetic expression"):
        calculate("2 +")


def test_bm25_search_returns_the_passage_that_matches_the_query():
    search = BM25Search(["the capital of france is paris", "bananas are yellow", "the moon orbits the earth"])
    assert search("what colour are bananas") == "bananas are yellow"
    assert search("capital of france") == "the capital of france is paris"


def _hangs(query: str) -> str:
    time.sleep(30)
    return "never"


def _raises(query: str) -> str:
    raise RuntimeError("disk on fire")


def test_a_tool_that_raises_hangs_or_says_too_much_gives_an_error_string_and_is_counted():
    box = ToolBox(
        [CALCULATOR, Tool("hang", "sleeps", _hangs), Tool("boom", "raises", _raises), Tool("long", "x", str.upper)],
        timeout_s=0.2,
        max_answer_chars=10,
    )
    assert box.call("calculator", "6*7") == ("42", True)
    started = time.perf_counter()
    answer, ok = box.call("hang", "")
    assert not ok and "timed out after 0.2 s" in answer and time.perf_counter() - started < 2
    assert box.call("boom", "") == ("error: RuntimeError: disk on fire", False)
    answer, ok = box.call("long", "a much longer answer")
    assert not ok and "too long" in answer
    answer, ok = box.call("nope", "1")
    assert not ok and "unknown tool 'nope'" in answer
    answer, ok = box.call("calculator", "import os")
    assert not ok and answer.startswith("error: ValueError")
    assert box.calls == {"calculator": 2, "hang": 1, "boom": 1, "long": 1, "nope": 1}
    assert box.errors == {"calculator": 1, "hang": 1, "boom": 1, "long": 1, "nope": 1}
    with pytest.raises(ValueError, match="distinct"):
        ToolBox([CALCULATOR, CALCULATOR])
