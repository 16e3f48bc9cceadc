"""The champion rule: beat the champion's judge score, with KL within the budget."""

from __future__ import annotations

from tasks.evaluate import distinct_n, win_rate
from tasks.registry import decide_promotion


def test_first_candidate_within_budget_becomes_champion():
    decision = decide_promotion(judge_score=0.6, kl=1.0, kl_budget=5.0, champion_judge_score=None)
    assert decision.promoted and "no champion yet" in decision.reason


def test_candidate_must_beat_the_champion():
    assert decide_promotion(0.61, 1.0, 5.0, champion_judge_score=0.60).promoted
    kept = decide_promotion(0.60, 1.0, 5.0, champion_judge_score=0.60)
    assert not kept.promoted and "0.6000" in kept.reason


def test_kl_over_budget_is_never_promoted_however_good():
    decision = decide_promotion(0.99, kl=6.0, kl_budget=5.0, champion_judge_score=None)
    assert not decision.promoted and "exceeds the budget" in decision.reason


def test_win_rate_counts_ties_half_and_distinct_n_counts_unique_ngrams():
    assert win_rate([0.9, 0.1, 0.5, 0.7], [0.1, 0.9, 0.5, 0.2]) == (2 + 0.5) / 4
    assert distinct_n(["a b a b"], 2) == 2 / 3  # (a b), (b a), (a b): two distinct of three
    assert distinct_n(["a"], 2) == 0.0
