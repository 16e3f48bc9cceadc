"""`make demo`: run the whole pipeline through the Prefect flow, then print SFT vs PPO and where to look.

Without PREFECT_API_URL the flow starts Prefect's temporary local server; every stage still goes
through `dvc repro`, so a later `dvc repro` finds the pipeline up to date.
"""

from __future__ import annotations

import os
import time

from flows.pipeline import rlhf_pipeline
from tasks.cli import OFFLINE_ENV, summary_table


def main() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    started = time.perf_counter()
    rlhf_pipeline()
    print(f"\nPipeline finished in {(time.perf_counter() - started) / 60:.1f} min.\n")
    print(summary_table())
    print("\nSamples: reports/samples.json   Metrics: metrics/*.json   Curves: .venv/bin/dvc plots show")
    print("MLflow:  .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1  (open :5000)")
    print("Registry: models rlhf-policy (aliases candidate, champion) and rlhf-reward-model")


if __name__ == "__main__":
    main()
