"""Tools a policy can call during a rollout: plain `str -> str` callables, run with a time and size limit.

A tool that raises, runs past its time limit or answers with too much text gives the policy a short error
string instead; the run goes on and the failure is counted.
"""

from __future__ import annotations

import ast
import operator
import queue
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Tool:
    """A callable the policy may invoke by name."""

    name: str
    """What the policy writes to call it (letters, digits, `_`)."""
    description: str
    """One line for the few-shot prompt."""
    function: Callable[[str], str]
    """query -> answer text."""


_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
MAX_EXPONENT = 100
"""Largest power the calculator computes, so `9**9**9` is refused instead of filling memory."""


def calculate(expression: str) -> str:
    """The value of an arithmetic expression (numbers, + - * / // % **, parentheses), as text.

    Python's own parser reads the expression into a syntax tree; only number, operator and parenthesis nodes
    are evaluated, here, so no name, call or attribute in model text is ever looked up or run.
    """
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from None
    value = _evaluate(tree.body)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(round(value, 6) if isinstance(value, float) else value)


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ValueError(f"exponent {right} is above {MAX_EXPONENT}")
        return _BINARY[type(node.op)](left, right)
    raise ValueError(f"only numbers and + - * / // % ** are allowed, got {type(node).__name__}")


CALCULATOR = Tool("calculator", "evaluates arithmetic, e.g. 12 * (3 + 4)", calculate)


@dataclass
class BM25Search:
    """Search over a local text corpus with BM25 (rank-bm25): the best-matching passages for a query."""

    corpus: list[str]
    """The passages searched."""
    top_k: int = 1
    """How many passages an answer holds."""
    index: object = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from rank_bm25 import BM25Plus

        if not self.corpus:
            raise ValueError("a search tool needs at least one passage")
        # BM25+ rather than Okapi: Okapi's IDF is 0 for a term in half the passages, so a small corpus finds nothing.
        self.index = BM25Plus([passage.lower().split() for passage in self.corpus])

    def __call__(self, query: str) -> str:
        scores = self.index.get_scores(query.lower().split())
        best = np.argsort(-scores, kind="stable")[: self.top_k]
        return " ".join(self.corpus[i] for i in best)


@dataclass
class ToolBox:
    """Runs tool calls by name with a per-call time limit and answer size limit, and counts them."""

    tools: list[Tool]
    timeout_s: float = 2.0
    """A call still running after this long answers with an error (its thread is left to finish alone)."""
    max_answer_chars: int = 200
    """A longer answer is replaced by an error."""
    calls: Counter = field(default_factory=Counter)
    """Calls per tool name (unknown names count under their own name)."""
    errors: Counter = field(default_factory=Counter)
    """Failed calls per tool name."""

    def __post_init__(self) -> None:
        names = [tool.name for tool in self.tools]
        if len(set(names)) != len(names):
            raise ValueError(f"tool names must be distinct, got {names}")
        self.by_name = {tool.name: tool for tool in self.tools}

    def call(self, name: str, query: str) -> tuple[str, bool]:
        """(answer, ok): the tool's answer, or a short error string and False."""
        self.calls[name] += 1
        tool = self.by_name.get(name)
        if tool is None:
            return self.failed(name, f"unknown tool {name!r}; tools: {', '.join(self.by_name)}")
        # A daemon thread, not an executor: a call that never returns must not keep the process alive at exit.
        answers: queue.Queue = queue.Queue(maxsize=1)
        thread = threading.Thread(target=_answer_into, args=(tool.function, query, answers), daemon=True)
        thread.start()
        try:
            ok, answer = answers.get(timeout=self.timeout_s)
        except queue.Empty:
            return self.failed(name, f"timed out after {self.timeout_s:g} s")
        if not ok:
            return self.failed(name, answer)
        if len(answer) > self.max_answer_chars:
            return self.failed(name, f"answer too long ({len(answer)} characters)")
        return answer, True

    def failed(self, name: str, message: str) -> tuple[str, bool]:
        """Count a failed call of `name` and give the policy a short error string."""
        self.errors[name] += 1
        return f"error: {message}"[:120], False


def _answer_into(function: Callable[[str], str], query: str, answers: queue.Queue) -> None:
    try:
        answers.put((True, str(function(query))))
    except Exception as err:  # any failure of user code becomes the policy's error string
        answers.put((False, f"{type(err).__name__}: {err}"))
