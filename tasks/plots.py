"""PNG plots of the PPO curves (reward and KL per step; reward and judges against KL on held-out prompts)."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

CURVES = (("objective/scores", "reward (sum of reward_sources)"), ("objective/kl", "KL to reference (nats)"))


def ppo_curves(history_csv: Path) -> Figure:
    """Reward and KL per PPO step, side by side, from metrics/ppo_history.csv."""
    rows = list(csv.DictReader(history_csv.open()))
    steps = [int(row["step"]) for row in rows]
    figure, axes = plt.subplots(1, len(CURVES), figsize=(10, 3.5), constrained_layout=True)
    for axis, (column, label) in zip(axes, CURVES, strict=True):
        axis.plot(steps, [float(row[column]) for row in rows], marker=".")
        axis.set_xlabel("PPO step")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    figure.suptitle("PPO training")
    return figure


def held_out_against_kl(kl: list[float], curves: dict[str, list[float]]) -> Figure:
    """The reward and each judge on held-out prompts against KL to the reference, one point per evaluation.

    As in Gao et al. (2022): reward hacking shows as the reward rising while a judge falls with growing KL. Each
    curve is on its own axis, since reward and judges have different scales.
    """
    figure, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.5), constrained_layout=True, squeeze=False)
    for axis, (name, values) in zip(axes[0], curves.items(), strict=True):
        axis.plot(kl, values, marker="o")
        axis.set_xlabel("KL(policy || reference), nats")
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
    figure.suptitle("Held-out prompts during PPO")
    return figure
