"""The custom recipe's reward function: a verifiable check that the answer names the right sum.

Any `f(prompts, responses) -> list[float]` works as a reward source or a judge; params.yaml names it as
`recipes.custom.reward:right_sum`.
"""

from __future__ import annotations

import re

NUMBERS = [
    *("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"),
    *("eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"),
]
QUESTION = re.compile(r"what is (\w+) plus (\w+)\?", re.IGNORECASE)


def right_sum(prompts: list[str], responses: list[str]) -> list[float]:
    """1.0 when the response's first number word is the sum the prompt asks for, else 0.0 (and 0.0 for prompts that
    ask no such question)."""
    return [_score(prompt, response) for prompt, response in zip(prompts, responses, strict=True)]


def _score(prompt: str, response: str) -> float:
    asked = QUESTION.findall(prompt)
    if not asked:
        return 0.0
    first, second = (NUMBERS.index(word.lower()) if word.lower() in NUMBERS else None for word in asked[-1])
    said = [word for word in re.findall(r"[a-z]+", response.lower()) if word in NUMBERS]
    if first is None or second is None or first + second >= len(NUMBERS) or not said:
        return 0.0
    # "Four plus two is six": the sum is the number word after the two operands.
    answer = said[2] if said[:2] == [NUMBERS[first], NUMBERS[second]] and len(said) > 2 else said[0]
    return float(answer == NUMBERS[first + second])
