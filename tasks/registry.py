"""MLflow model registry: log trained models, alias the new policy `candidate`, promote `champion`.

A candidate becomes champion only when its held-out judge score beats the current champion's and
its KL to the SFT reference stays within `tracking.promotion_kl_budget`; the decision and its
reason are recorded on the model version as tags.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

CANDIDATE, CHAMPION = "candidate", "champion"
JUDGE_METRIC, KL_METRIC = "eval/ppo_judge_score", "eval/kl_ppo_to_sft"
# Passed explicitly: MLflow's inference would add torchvision, which does not import beside CPU torch.
_SERVING_PACKAGES = ("torch", "transformers", "accelerate", "safetensors", "tokenizers")


def pip_requirements() -> list[str]:
    return [f"{name}=={importlib.metadata.version(name)}" for name in _SERVING_PACKAGES]


def log_model(model_dir: Path, artifact_name: str, registered_name: str, task: str) -> str:
    """Log a saved transformers folder to the active run, register it, and return the new version."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    # Components, not the folder path: MLflow 3.17's path logging breaks on transformers 5's task table.
    model_class = AutoModelForCausalLM if task == "text-generation" else AutoModelForSequenceClassification
    components = {
        "model": model_class.from_pretrained(model_dir, use_safetensors=True),
        "tokenizer": AutoTokenizer.from_pretrained(model_dir),
    }
    info = mlflow.transformers.log_model(
        transformers_model=components,
        name=artifact_name,
        task=task,
        pip_requirements=pip_requirements(),
        registered_model_name=registered_name,
    )
    return str(info.registered_model_version)


@dataclass(frozen=True)
class Promotion:
    promoted: bool
    reason: str


def decide_promotion(judge_score: float, kl: float, kl_budget: float, champion_judge_score: float | None) -> Promotion:
    """Champion only if the KL is within budget and the judge score beats the champion's (if any)."""
    if kl > kl_budget:
        return Promotion(False, f"KL {kl:.3f} exceeds the budget {kl_budget:.3f}")
    if champion_judge_score is not None and judge_score <= champion_judge_score:
        return Promotion(False, f"judge score {judge_score:.4f} <= the champion's {champion_judge_score:.4f}")
    against = "no champion yet" if champion_judge_score is None else f"champion had {champion_judge_score:.4f}"
    return Promotion(True, f"judge score {judge_score:.4f} ({against}), KL {kl:.3f} within {kl_budget:.3f}")


def promote_candidate(name: str, version: str, metrics: dict[str, float], kl_budget: float) -> Promotion:
    """Alias `version` candidate; make it champion if `decide_promotion` says so; tag the decision."""
    client = MlflowClient()
    client.set_registered_model_alias(name, CANDIDATE, version)
    champion_score = _champion_judge_score(client, name)
    decision = decide_promotion(metrics[JUDGE_METRIC], metrics[KL_METRIC], kl_budget, champion_score)
    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, "promotion", decision.reason)
    for key in (JUDGE_METRIC, KL_METRIC):
        client.set_model_version_tag(name, version, key, f"{metrics[key]:.6f}")
    return decision


def _champion_judge_score(client: MlflowClient, name: str) -> float | None:
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no champion yet
        return None
    return float(champion.tags[JUDGE_METRIC])
