"""KL coefficient controllers: fixed, or adaptive toward a target KL (Ziegler et al. 2019)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class KLController:
    """Holds the current KL coefficient; adapts it when a target is set."""

    value: float
    target: float | None = None
    horizon: int = 10000

    def update(self, current_kl: float, n_episodes: int) -> None:
        """Move the coefficient up when the KL exceeds the target, down when below (at most +-20% error)."""
        if self.target is None:
            return
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_episodes / self.horizon
