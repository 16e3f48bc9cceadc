"""MLflow model registry: log trained models, alias the new policy `candidate`, promote `champion`.

A candidate becomes champion only when the gating judge's 95% paired-bootstrap interval on PPO - SFT lies
above zero, its judge score beats the current champion's, and its KL to the SFT reference stays within
`tracking.promotion_kl_budget`; the decision and its reason are recorded on the model version as tags.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from rlhf_lib.config import ConfigError

CANDIDATE, CHAMPION = "candidate", "champion"
APPROVAL_TAG, PENDING = "approval", "pending"
JUDGE_TAG = "rlhf.promotion_judge"  # on a model version: the judge whose score the version was promoted by
EXPERIMENT_TAG = "rlhf.experiment"  # on a registered model: the one MLflow experiment whose runs may register to it
RECIPE_TAG = "rlhf.recipe"  # on runs and model versions: the task (tracking.recipe) they belong to
JUDGE_METRIC, KL_METRIC, CI_LOW_METRIC = "eval/ppo_judge_score", "eval/kl_ppo_to_sft", "eval/judge_diff_ci_low"
# Passed explicitly: MLflow's inference would add torchvision, which does not import beside CPU torch.
_SERVING_PACKAGES = ("torch", "transformers", "accelerate", "safetensors", "tokenizers")


def pip_requirements() -> list[str]:
    return [f"{name}=={importlib.metadata.version(name)}" for name in _SERVING_PACKAGES]


def require_own_names(tracking) -> None:
    """Refuse, before any work, to register into a model name that another experiment's runs own.

    A profile (smoke) or recipe logs to its own experiment; were it to register under the same name as the
    real pipeline, its tiny model could become the real champion.
    """
    if not tracking.log_models:
        return
    client = MlflowClient()
    for name in (tracking.policy_model_name, tracking.reward_model_name):
        owner = _owner(client, name)
        if owner is not None and owner != tracking.experiment:
            raise ConfigError(
                f"tracking: registered model {name!r} holds models of experiment {owner!r}, and this run logs to "
                f"{tracking.experiment!r}; give it names of its own (tracking.policy_model_name, reward_model_name)"
            )


def _owner(client: MlflowClient, name: str) -> str | None:
    """The experiment a registered name belongs to: its tag, else (registered before the tag existed) the
    experiment of its first version's run; None when the name is free."""
    try:
        model = client.get_registered_model(name)
    except MlflowException:  # not registered yet
        return None
    if EXPERIMENT_TAG in model.tags:
        return model.tags[EXPERIMENT_TAG]
    versions = sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
    if not versions or not versions[0].run_id:
        return None
    return client.get_experiment(client.get_run(versions[0].run_id).info.experiment_id).name


def log_model(model_dir: Path, artifact_name: str, registered_name: str, task: str, recipe: str) -> str:
    """Log a saved transformers folder to the active run, register it (the version tagged with its recipe), and
    return the new version.

    The policy is logged in bf16, what serving it needs: half the bytes of the fp32 training copy
    (SmolLM2-135M: 270 MB instead of 540 MB per registered version). An encoder-decoder policy is logged under
    "text-generation" too: transformers 5 dropped the text2text-generation pipeline, MLflow 3.17 refuses that
    task, and transformers' text-generation pipeline runs encoder-decoders; `mlflow.transformers.load_model`
    gives the seq2seq class back.
    """
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    # Components, not the folder path: MLflow 3.17's path logging breaks on transformers 5's task table.
    generator = task == "text-generation"
    if not generator:
        model_class = AutoModelForSequenceClassification
    elif AutoConfig.from_pretrained(model_dir).is_encoder_decoder:
        model_class = AutoModelForSeq2SeqLM
    else:
        model_class = AutoModelForCausalLM
    dtype = torch.bfloat16 if generator else torch.float32
    components = {
        "model": model_class.from_pretrained(model_dir, use_safetensors=True, dtype=dtype),
        "tokenizer": AutoTokenizer.from_pretrained(model_dir),
    }
    info = mlflow.transformers.log_model(
        transformers_model=components,
        name=artifact_name,
        task=task,
        pip_requirements=pip_requirements(),
        registered_model_name=registered_name,
    )
    client = MlflowClient()
    client.set_model_version_tag(registered_name, str(info.registered_model_version), RECIPE_TAG, recipe)
    if EXPERIMENT_TAG not in client.get_registered_model(registered_name).tags:  # the first registration owns it
        owner = client.get_experiment(mlflow.active_run().info.experiment_id).name
        client.set_registered_model_tag(registered_name, EXPERIMENT_TAG, owner)
    return str(info.registered_model_version)


@dataclass(frozen=True)
class Promotion:
    promoted: bool
    reason: str


def decide_promotion(
    judge_score: float, kl: float, kl_budget: float, champion_judge_score: float | None, ci_low: float
) -> Promotion:
    """Champion only if the KL is within budget, PPO beats SFT beyond doubt (the interval's lower bound is above
    zero), and the judge score beats the champion's (if any)."""
    if kl > kl_budget:
        return Promotion(False, f"KL {kl:.3f} exceeds the budget {kl_budget:.3f}")
    if ci_low <= 0:
        return Promotion(False, f"the judge's 95% interval on PPO - SFT reaches {ci_low:.4f}, not above zero")
    if champion_judge_score is not None and judge_score <= champion_judge_score:
        return Promotion(False, f"judge score {judge_score:.4f} <= the champion's {champion_judge_score:.4f}")
    against = "no champion yet" if champion_judge_score is None else f"champion had {champion_judge_score:.4f}"
    return Promotion(True, f"judge score {judge_score:.4f} ({against}), KL {kl:.3f} within {kl_budget:.3f}")


def promote_candidate(
    name: str, version: str, metrics: dict[str, float], kl_budget: float, judge: str, needs_approval: bool = False
) -> Promotion:
    """Alias `version` candidate; make it champion if `decide_promotion` says so; tag the decision.

    `judge` names the gating judge; a champion judged by another one has a score on another scale, so the
    candidate is not compared with it and stays a candidate (promote it by hand after comparing them). With
    `needs_approval`, a candidate the rule would promote is tagged `approval: pending` instead, for a person to
    approve (`settle_approval`).
    """
    client = MlflowClient()
    client.set_registered_model_alias(name, CANDIDATE, version)
    client.set_model_version_tag(name, version, JUDGE_TAG, judge)
    champion_judge, champion_score = _champion_judge_score(client, name)
    if champion_judge not in (None, judge):
        decision = Promotion(False, f"the champion was judged by {champion_judge!r}, this candidate by {judge!r}")
    else:
        decision = decide_promotion(
            metrics[JUDGE_METRIC], metrics[KL_METRIC], kl_budget, champion_score, metrics[CI_LOW_METRIC]
        )
    if decision.promoted and needs_approval:
        client.set_model_version_tag(name, version, APPROVAL_TAG, PENDING)
        decision = Promotion(False, f"{decision.reason}; awaits a person's approval")
    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, "promotion", decision.reason)
    for key in (JUDGE_METRIC, KL_METRIC, CI_LOW_METRIC):
        client.set_model_version_tag(name, version, key, f"{metrics[key]:.6f}")
    return decision


def _champion_judge_score(client: MlflowClient, name: str) -> tuple[str | None, float | None]:
    """(the judge that scored the champion, its score); (None, None) when there is no champion. A champion from
    before judges were named was scored by the pipeline's one judge of then, the first judge of now."""
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no champion yet
        return None, None
    return champion.tags.get(JUDGE_TAG), float(champion.tags[JUDGE_METRIC])


def pending_approval(name: str) -> str | None:
    """The newest version of `name` that passed the promotion rule and waits for a person, if any."""
    versions = MlflowClient().search_model_versions(f"name = '{name}' and tags.{APPROVAL_TAG} = '{PENDING}'")
    return max((str(v.version) for v in versions), key=int, default=None)


def settle_approval(name: str, version: str, approved: bool | None, note: str) -> None:
    """Record a person's answer on a pending version: approved (it becomes champion), rejected (it stays a
    candidate), or None for no answer in time (nothing is promoted)."""
    client = MlflowClient()
    outcome = {True: "approved", False: "rejected", None: "no answer"}[approved]
    if approved:
        client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, APPROVAL_TAG, f"{outcome}: {note}" if note else outcome)
