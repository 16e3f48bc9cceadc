"""A metrics hook, so callers (the pipeline's MLflow logging) see every metric without the library
importing a tracking tool."""

from __future__ import annotations

from collections.abc import Callable

from transformers import TrainerCallback

MetricsSink = Callable[[dict[str, float], int], None]
"""Called with (metrics, step) each time a trainer logs."""


class MetricsSinkCallback(TrainerCallback):
    """Forwards `transformers.Trainer` logs to a MetricsSink, with a namespace prefix (`sft/loss`)."""

    def __init__(self, sink: MetricsSink, prefix: str) -> None:
        self.sink = sink
        self.prefix = prefix

    def on_log(self, args, state, control, logs=None, **kwargs):
        numbers = {f"{self.prefix}/{k}": float(v) for k, v in (logs or {}).items() if isinstance(v, int | float)}
        if numbers:
            self.sink(numbers, state.global_step)
