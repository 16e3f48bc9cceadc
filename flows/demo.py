"""`make demo`: run the whole pipeline through the Prefect flow, then print SFT vs PPO and where to look.

Without PREFECT_API_URL the flow starts Prefect's temporary local server; every stage still goes
through `dvc repro`, so a later `dvc repro` finds the pipeline up to date.
"""

from __future__ import annotations

import os
import time

from flows.pipeline import rlhf_pipeline
from tasks.cli import OFFLINE_ENV, summary_table

DEMO_EXPERIMENT = "demo"


def main() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    started = time.perf_counter()
    rlhf_pipeline(experiment=DEMO_EXPERIMENT)
    print(f"\nPipeline finished in {(time.perf_counter() - started) / 60:.1f} min.\n")
    print(summary_table())
    print(f"\nSaved as the DVC experiment '{DEMO_EXPERIMENT}': source .venv/bin/activate, then `dvc exp show`")
    print("Samples: reports/samples.json   Metrics: metrics/*.json   Curves: dvc plots show (dvc_plots/index.html)")
    print("MLflow:  mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1  (open :5000)")
    print("Registry: models rlhf-policy (aliases candidate, champion) and rlhf-reward-model")


if __name__ == "__main__":
    main()
