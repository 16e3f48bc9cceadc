"""The paired-bootstrap interval against scipy's bootstrap and the normal approximation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from rlhf_lib.evaluation import paired_bootstrap_interval


def test_paired_bootstrap_matches_scipy_and_the_normal_approximation():
    rng = np.random.default_rng(1)
    sft = rng.normal(0.5, 0.2, size=48)
    ppo = sft + rng.normal(0.1, 0.1, size=48)  # a paired gain of 0.1 with prompt-level noise shared
    low, high = paired_bootstrap_interval(ppo.tolist(), sft.tolist(), samples=20000)
    differences = ppo - sft
    independent = scipy.stats.bootstrap(
        (differences,), np.mean, n_resamples=20000, method="percentile", random_state=7
    ).confidence_interval
    assert low == pytest.approx(independent.low, abs=0.005) and high == pytest.approx(independent.high, abs=0.005)
    half_width = 1.96 * differences.std(ddof=1) / np.sqrt(differences.size)
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.1)
    assert low > 0  # the gain is real: the lower bound clears zero
    # Unpaired, the shared prompt-level spread (0.2) would swamp the gain; pairing is what makes it visible.
    assert high - low < 2 * 1.96 * np.sqrt(2 * 0.2**2 / 48) / 2


def test_paired_bootstrap_of_no_difference_straddles_zero():
    scores = np.random.default_rng(2).normal(size=48).tolist()
    low, high = paired_bootstrap_interval(scores, list(reversed(scores)))
    assert low < 0 < high
