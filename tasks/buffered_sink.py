"""Metric logging that survives a tracking-server outage: points the server does not take wait in memory.

MLflow's client retries each request (MLFLOW_HTTP_REQUEST_MAX_RETRIES; the stages default it to 3 instead of
MLflow's 7). A point that still fails is kept, training goes on, and the buffer is sent with a later point once the
server is back, so an outage costs no logged point and does not stop training. At the end of the stage, `close`
waits up to `tracking.outage_wait_s` for the server; if it is still away, the stage fails naming the URI, after
its checkpoints and outputs are on disk (a rerun resumes from them).
"""

from __future__ import annotations

import logging
import time

from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from tasks.errors import TrackingUnavailableError

MAX_BATCH = 1000  # MLflow's limit on metrics per log_batch request
RETRY_EVERY_S = 30.0  # while the server is away, training steps do not wait on it more often than this
logger = logging.getLogger(__name__)


def is_outage(err: MlflowException) -> bool:
    """The server could not be reached or answered 5xx (restarting, overloaded), as opposed to a refused request."""
    return err.get_http_status_code() >= 500


class BufferedMetricsSink:
    """A MetricsSink that logs to one MLflow run and keeps what the server does not take until it does."""

    def __init__(self, client: MlflowClient, run_id: str, uri: str, retry_every_s: float = RETRY_EVERY_S) -> None:
        self.client, self.run_id, self.uri, self.retry_every_s = client, run_id, uri, retry_every_s
        self.pending: list[Metric] = []
        self.down_since: float | None = None
        self.last_try = 0.0

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.pending.extend(Metric(key, float(value), now, step) for key, value in metrics.items())
        if self.down_since is None or time.monotonic() - self.last_try >= self.retry_every_s:
            self.flush()

    def flush(self) -> bool:
        """Send every pending point; False (the points kept) if the server is away."""
        self.last_try = time.monotonic()
        try:
            while self.pending:
                batch = self.pending[:MAX_BATCH]
                self.client.log_batch(self.run_id, metrics=batch)
                del self.pending[: len(batch)]
        except MlflowException as err:
            if not is_outage(err):
                raise
            if self.down_since is None:
                self.down_since = time.monotonic()
                logger.warning("MLflow server %s unreachable (%s); points are kept until it is back", self.uri, err)
            return False
        if self.down_since is not None:
            logger.warning("MLflow server %s is back after %.0f s; kept points sent", self.uri, self.outage_seconds)
            self.down_since = None
        return True

    @property
    def outage_seconds(self) -> float:
        return 0.0 if self.down_since is None else time.monotonic() - self.down_since

    def close(self, wait_s: float, stage: str) -> None:
        """Send what is pending, waiting up to `wait_s` for the server; raise TrackingUnavailableError after that."""
        deadline = time.monotonic() + wait_s
        while not self.flush():
            if time.monotonic() >= deadline:
                raise TrackingUnavailableError(
                    f"MLflow server {self.uri} unreachable for {self.outage_seconds:.0f} s at the end of stage "
                    f"{stage}: {len(self.pending)} metric points were not logged. The stage's checkpoints and outputs "
                    "are saved; rerun it once the server is back"
                )
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
