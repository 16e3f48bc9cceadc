"""Judges of the sentiment recipe beside the trained classifier."""

from __future__ import annotations


def vader(prompts: list[str], responses: list[str]) -> list[float]:
    """VADER's compound sentiment (-1..1) of prompt + response: rule-based, so it cannot share a model's blind spots."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    return [
        analyzer.polarity_scores(prompt + response)["compound"]
        for prompt, response in zip(prompts, responses, strict=True)
    ]
