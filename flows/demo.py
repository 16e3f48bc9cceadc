"""`make demo [RECIPE=name]`: run a recipe's pipeline through the Prefect flow, then print SFT vs PPO and where to look.

The recipe's params file is the flow's profile, so params.yaml is left as it is (and `make demo` ignores edits to
it: run `dvc repro` for those). Without PREFECT_API_URL the flow starts Prefect's temporary local server; every
stage still goes through `dvc repro`, so after the sentiment recipe, whose params params.yaml starts as, a later
`dvc repro` finds the pipeline up to date.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import yaml

from flows.pipeline import rlhf_pipeline
from tasks.cli import OFFLINE_ENV, summary_table

DEMO_EXPERIMENT = "demo"


def recipe_profile(recipe: str, recipes: Path = Path("recipes")) -> Path:
    """recipes/<recipe>/params.yaml, refused (SystemExit naming the fix) when missing or tagged as another recipe."""
    profile = recipes / recipe / "params.yaml"
    if not profile.is_file():
        known = sorted(path.parent.name for path in recipes.glob("*/params.yaml"))
        raise SystemExit(f"error: no recipe {recipe!r} ({profile}); recipes: {known}")
    # A copied recipe that keeps its original's tag would file its runs under the other task in MLflow.
    tagged = (yaml.safe_load(profile.read_text()) or {}).get("tracking", {}).get("recipe")
    if tagged != recipe:
        raise SystemExit(
            f"error: {profile}: set tracking.recipe to {recipe!r} (it is {tagged!r}), so MLflow files its runs under it"
        )
    return profile


def main() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    recipe = sys.argv[1] if len(sys.argv) > 1 else "sentiment"
    profile = recipe_profile(recipe)
    started = time.perf_counter()
    experiment = DEMO_EXPERIMENT if recipe == "sentiment" else f"{DEMO_EXPERIMENT}-{recipe}"
    rlhf_pipeline(profile=str(profile), experiment=experiment)
    print(f"\nPipeline finished in {(time.perf_counter() - started) / 60:.1f} min.\n")
    print(summary_table())
    print(f"\nSaved as the DVC experiment '{experiment}': source .venv/bin/activate, then `dvc exp show`")
    print("Samples: reports/samples.json   Metrics: metrics/*.json   Curves: dvc plots show (dvc_plots/index.html)")
    print("MLflow:  mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1  (open :5000)")
    print("Registry: the recipe's policy and reward model names (tracking.*_model_name), aliases candidate, champion")


if __name__ == "__main__":
    main()
