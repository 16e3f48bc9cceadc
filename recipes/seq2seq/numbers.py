"""The seq2seq recipe's task: write a number given in digits out in English words ("40317" -> "forty thousand three
hundred seventeen"), and the functions that score an answer.

The reward and the judge read the number back from the prompt itself (a reward function's signature is
`f(prompts, responses)`), so the reference is computed, never looked up.
"""

from __future__ import annotations

import re

import sacrebleu

INSTRUCTION = "in words:"
ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
TENS = ["-", "-", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
LARGEST = 999_999
_NUMBER = re.compile(rf"{re.escape(INSTRUCTION)}\s*(\d+)")


def spell(n: int) -> str:
    """`n` (0..999,999) in English words, American style without "and": 40317 -> "forty thousand three hundred
    seventeen"."""
    if not 0 <= n <= LARGEST:
        raise ValueError(f"spell: {n} is outside 0..{LARGEST}")
    if n == 0:
        return "zero"
    thousands, rest = divmod(n, 1000)
    words = [*_below_thousand(thousands), "thousand"] if thousands else []
    return " ".join(words + _below_thousand(rest))


def _below_thousand(n: int) -> list[str]:
    hundreds, rest = divmod(n, 100)
    words = [ONES[hundreds], "hundred"] if hundreds else []
    if rest >= 20:
        words.append(TENS[rest // 10])
        rest %= 10
    if rest:
        words.append(ONES[rest])
    return words


def prompt_for(n: int) -> str:
    return f"{INSTRUCTION} {n}"


def reference(prompt: str) -> str | None:
    """The right answer to `prompt`, or None if it holds no number to spell."""
    match = _NUMBER.search(prompt)
    return spell(int(match.group(1))) if match and int(match.group(1)) <= LARGEST else None


def exact(prompts: list[str], responses: list[str]) -> list[float]:
    """1 for a response that is exactly the number in words (spaces normalised), else 0 (the held-out judge)."""
    return [float(" ".join(r.split()) == reference(p)) for p, r in zip(prompts, responses, strict=True)]


def chrf(prompts: list[str], responses: list[str]) -> list[float]:
    """sacrebleu's sentence chrF of the response against the number in words, scaled to 0..1 (PPO's reward): partly
    right answers get partial credit, so the reward is dense where exact match is all or nothing."""
    return [
        sacrebleu.sentence_chrf(" ".join(r.split()), [reference(p) or ""]).score / 100
        for p, r in zip(prompts, responses, strict=True)
    ]
