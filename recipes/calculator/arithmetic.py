"""The calculator recipe's problems, and the functions that score answers to them.

A problem is one of a few word templates around two numbers and an operation. The reward and the judge read
the true answer back from the prompt itself (the reward function's signature is `f(prompts, responses)`), and
the policy's answer from the last `Answer: N` of its response, after any tool answers.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass

INSTRUCTION = "Use <call>calculator: expression</call> for arithmetic. End with 'Answer: <number>'."


@dataclass(frozen=True)
class Template:
    text: str
    """The problem, with {a} and {b} for the numbers."""
    symbol: str
    """The operation, as the calculator reads it."""

    def pattern(self) -> re.Pattern:
        escaped = re.escape(self.text).replace(r"\{a\}", r"(\d+)").replace(r"\{b\}", r"(\d+)")
        return re.compile(escaped)


TEMPLATES = (
    Template("A shop has {a} apples and gets {b} more. How many apples does it have now?", "+"),
    Template("A tank holds {a} litres and {b} litres leak out. How many litres are left?", "-"),
    Template("There are {a} boxes with {b} pencils in each. How many pencils are there?", "*"),
    Template("A library had {a} books and bought {b} more. How many books does it have?", "+"),
    Template("A farmer picked {a} eggs and sold {b} of them. How many eggs are left?", "-"),
    Template("Each of {a} buses carries {b} people. How many people ride in all?", "*"),
)
OPERATIONS = {"+": operator.add, "-": operator.sub, "*": operator.mul}
ANSWER = re.compile(r"Answer:\s*(-?\d+)")


def solve(prompt: str) -> int | None:
    """The true answer of the problem in `prompt`, or None if it holds none of the templates."""
    for template in TEMPLATES:
        if match := template.pattern().search(prompt):
            a, b = (int(group) for group in match.groups())
            return OPERATIONS[template.symbol](a, b)
    return None


def final_answer(response: str) -> int | None:
    """The number after the response's last `Answer:`, outside tool answers; None if there is none."""
    own_text = re.sub(r"<result>.*?</result>", " ", response, flags=re.DOTALL)
    answers = ANSWER.findall(own_text)
    return int(answers[-1]) if answers else None


def correct(prompts: list[str], responses: list[str]) -> list[float]:
    """1 for a response whose final answer is right, else 0 (the reward, and the held-out judge)."""
    answers = [final_answer(response) for response in responses]
    return [float(a is not None and a == solve(p)) for p, a in zip(prompts, answers, strict=True)]


def tool_calls(prompts: list[str], responses: list[str]) -> list[float]:
    """Calls the response made (for a small cost per call, as a negatively weighted reward source)."""
    return [float(response.count("<result>")) for response in responses]
