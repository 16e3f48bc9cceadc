"""Pipeline errors that callers tell apart without importing the tools behind them."""


class TrackingUnavailableError(RuntimeError):
    """The MLflow tracking server cannot be reached; raised before any training starts."""
