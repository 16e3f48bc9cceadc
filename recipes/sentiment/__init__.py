"""Positive movie reviews: SFT on IMDb excerpts, a reward model from labelled review pairs, PPO toward praise."""
