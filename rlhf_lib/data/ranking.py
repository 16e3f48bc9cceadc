"""Preference pairs from scored answers: every two answers to one prompt whose scores differ enough."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations


def ranked_pairs(answers: Sequence[str], scores: Sequence[float], min_gap: float) -> list[tuple[str, str]]:
    """(better, worse) for every two of one prompt's answers whose scores differ by at least `min_gap`.

    An answer repeated word for word counts once; the gap keeps near-ties out, where the score's own noise would
    decide which side is chosen.
    """
    if len(answers) != len(scores):
        raise ValueError(f"{len(answers)} answers against {len(scores)} scores: one score per answer")
    if min_gap <= 0:
        raise ValueError(f"min_gap must be > 0 (a tie is no preference), got {min_gap}")
    distinct: dict[str, tuple[str, float]] = {}  # by text without surrounding whitespace: the first one stays
    for answer, score in zip(answers, scores, strict=True):
        distinct.setdefault(answer.strip(), (answer, score))
    ranked = sorted(distinct.values(), key=lambda item: -item[1])  # stable: equal scores keep their order
    return [(better, worse) for (better, high), (worse, low) in combinations(ranked, 2) if high - low >= min_gap]
