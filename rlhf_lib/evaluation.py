"""Comparing two policies on the same prompts: win rate, a paired-bootstrap interval, and diversity."""

from __future__ import annotations

import numpy as np


def win_rate(challenger: list[float], incumbent: list[float]) -> float:
    """Share of prompts where the challenger scores higher (ties count half)."""
    wins = sum(c > i for c, i in zip(challenger, incumbent, strict=True))
    ties = sum(c == i for c, i in zip(challenger, incumbent, strict=True))
    return (wins + 0.5 * ties) / len(challenger)


def paired_bootstrap_interval(
    challenger: list[float], incumbent: list[float], samples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of mean(challenger - incumbent), resampling prompts with replacement.

    Paired: each resample keeps a prompt's two scores together, so the prompt-to-prompt spread that both
    policies share cancels (much narrower than comparing two independent means). scipy.stats.bootstrap does
    the same with more options; numpy keeps scipy out of the library's dependencies for three lines.
    """
    differences = np.asarray(challenger, dtype=float) - np.asarray(incumbent, dtype=float)
    if differences.size == 0:
        raise ValueError("a paired bootstrap needs at least one prompt")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, differences.size, size=(samples, differences.size))
    means = differences[picks].mean(axis=1)
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def distinct_n(texts: list[str], n: int) -> float:
    """Share of unique word n-grams among all n-grams (diversity; 1.0 = no repetition)."""
    grams = [tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
