"""Preference pairs ranked from scored answers, against a brute-force count over every two answers."""

from __future__ import annotations

import random

import pytest

from rlhf_lib.data.ranking import ranked_pairs


def _brute_force(answers: list[str], scores: list[float], min_gap: float) -> set[tuple[str, str]]:
    first: dict[str, int] = {}
    for i, answer in enumerate(answers):
        first.setdefault(answer.strip(), i)
    kept = sorted(first.values())
    return {
        (answers[i], answers[j]) if scores[i] > scores[j] else (answers[j], answers[i])
        for a, i in enumerate(kept)
        for j in kept[a + 1 :]
        if abs(scores[i] - scores[j]) >= min_gap
    }


def test_pairs_match_a_brute_force_count():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(0, 7)
        answers = [rng.choice(["a", "b", " b", "c", "d", "e f", "g", "h"]) for _ in range(n)]
        scores = [round(rng.uniform(0, 1), 2) for _ in range(n)]
        pairs = ranked_pairs(answers, scores, 0.2)
        assert len(pairs) == len(set(pairs))
        assert set(pairs) == _brute_force(answers, scores, 0.2)


def test_better_answer_is_chosen_and_near_ties_are_left_out():
    pairs = ranked_pairs(["ok", "best", "bad", "best "], [0.5, 0.9, 0.1, 0.0], min_gap=0.3)
    # "best " repeats "best" (its score is not a second opinion); 0.5 vs 0.9 is 0.4 apart, 0.5 vs 0.1 too.
    assert pairs == [("best", "ok"), ("best", "bad"), ("ok", "bad")]
    assert ranked_pairs(["x", "y"], [0.5, 0.6], min_gap=0.15) == []


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="one score per answer"):
        ranked_pairs(["a", "b"], [1.0], 0.1)
    with pytest.raises(ValueError, match="min_gap must be > 0"):
        ranked_pairs(["a", "b"], [1.0, 0.0], 0.0)
