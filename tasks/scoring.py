"""The reward and the judges that params.yaml names, built into callables `f(prompts, responses) -> list[float]`."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

from rlhf_lib.config import ConfigError, ModelConfig
from rlhf_lib.models.loading import load_encoder, load_sequence_scorer, load_tokenizer
from rlhf_lib.rewards import (
    ClassifierScorer,
    RewardModelScorer,
    RewardSource,
    RewardSourceError,
    WeightedReward,
    import_callable,
)
from rlhf_lib.similarity import EmbeddingSimilarity
from tasks.labelling.ratings import HumanRatings
from tasks.params import (
    MODELS_DIR,
    ClassifierSource,
    FunctionSource,
    HumanReward,
    PipelineParams,
    ReferenceSource,
    TrainedSource,
)

REWARD_MODEL_DIR = MODELS_DIR / "reward"
JUDGE_DIR = MODELS_DIR / "judge"
Judge = Callable[[list[str], list[str], list[str] | None], list[float]]
"""judge(prompts, responses, references) -> one score per response (references: one per prompt, or None)."""


def build_reward(params: PipelineParams) -> WeightedReward:
    """The weighted sum of `params.reward_sources`; the trained reward model is read from models/reward."""
    sources = []
    for source in params.reward_sources:
        if isinstance(source, HumanReward):
            function = HumanRatings(source.name, Path(source.folder), source.timeout_s, source.on_timeout == "skip")
        elif isinstance(source, TrainedSource):
            _require_trained(REWARD_MODEL_DIR, "reward", source.name)
            remote_code = params.reward_model.trust_remote_code
            cfg = ModelConfig(name_or_path=str(REWARD_MODEL_DIR), trust_remote_code=remote_code)
            function = RewardModelScorer(
                load_sequence_scorer(cfg),
                load_tokenizer(cfg, padding_side="right"),
                baseline_response=source.baseline_response,
            )
        else:
            function = _scorer(source)
        sources.append(RewardSource(source.name, function, source.weight))
    return WeightedReward(sources)


def reward_code_and_weights(params: PipelineParams) -> list[Path]:
    """The files behind the reward beyond params: each function's module and each local classifier's folder.

    Part of the PPO checkpoint key, so editing a reward function starts PPO afresh instead of resuming (and,
    at the last step, republishing) a policy trained on the old reward.
    """
    paths = []
    for source in params.reward_sources:
        if isinstance(source, FunctionSource):
            spec = importlib.util.find_spec(source.function.partition(":")[0])
            if spec is not None and spec.origin:
                paths.append(Path(spec.origin))
        elif isinstance(source, ClassifierSource) and Path(source.model.name_or_path).is_dir():
            paths.append(Path(source.model.name_or_path))
    return paths


def probe_reward(reward: WeightedReward, prompts: list[str]) -> None:
    """Call every source but people once on two prompts (each its own response), so a broken function fails before
    training."""
    sample = prompts[:2]
    machine_sources = [source for source in reward.sources if not isinstance(source.function, HumanRatings)]
    if not machine_sources:  # people are not asked to rate prompts
        return
    try:
        WeightedReward(machine_sources)(sample, sample)
    except RewardSourceError as err:
        raise ConfigError(f"reward_sources: {err} (probed with two PPO prompts before training)") from None


def build_judges(params: PipelineParams) -> dict[str, Judge]:
    """Each of `params.judges` by name; the trained judge is read from models/judge (P(label 1))."""
    judges: dict[str, Judge] = {}
    for judge in params.judges:
        if isinstance(judge, ReferenceSource):
            judges[judge.name] = _reference_metric(judge, judge.model or params.reward_model)
            continue
        if isinstance(judge, TrainedSource):
            _require_trained(JUDGE_DIR, "judge", judge.name)
            cfg = ModelConfig(name_or_path=str(JUDGE_DIR), trust_remote_code=params.judge_backbone().trust_remote_code)
            scorer = ClassifierScorer(load_sequence_scorer(cfg, num_labels=2), load_tokenizer(cfg), label=1)
        else:
            scorer = _scorer(judge)
        judges[judge.name] = _ignoring_references(scorer)
    return judges


def _require_trained(folder: Path, stage: str, name: str) -> None:
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{name!r} is a `trained` model, but {folder} holds none: run `rlhf stage {stage}` first")


def _scorer(source: ClassifierSource | FunctionSource) -> Callable[[list[str], list[str]], list[float]]:
    if isinstance(source, FunctionSource):
        return import_callable(source.function, f"{source.name}: function")
    model = load_sequence_scorer(source.model, num_labels=None)
    tokenizer = load_tokenizer(source.model, padding_side="right")
    baseline = getattr(source, "baseline_response", None)  # reward sources have one; judges score absolutely
    try:
        return ClassifierScorer(
            model, tokenizer, source.label, source.output, source.include_prompt, baseline_response=baseline
        )
    except RewardSourceError as err:
        raise ConfigError(f"{source.name}: {err}") from None


def _ignoring_references(scorer: Callable[[list[str], list[str]], list[float]]) -> Judge:
    return lambda prompts, responses, references=None: scorer(prompts, responses)


def answer_metric(metric: str, encoder: ModelConfig) -> Callable[[list[str], list[str]], list[float]]:
    """metric(responses, references) -> one score per pair: sacrebleu's sentence chrF (0-100) for `chrf`, else the
    cosine (-1..1) of the two texts' mean-pooled embeddings under `encoder`."""
    if metric == "chrf":
        import sacrebleu

        def chrf(responses: list[str], references: list[str]) -> list[float]:
            pairs = zip(responses, references, strict=True)
            return [sacrebleu.sentence_chrf(response, [reference]).score for response, reference in pairs]

        return chrf
    return EmbeddingSimilarity(load_encoder(encoder), load_tokenizer(encoder, padding_side="right"))


def _reference_metric(judge: ReferenceSource, encoder: ModelConfig) -> Judge:
    metric = answer_metric(judge.metric, encoder)

    def score(prompts: list[str], responses: list[str], references: list[str] | None = None) -> list[float]:
        if references is None:
            raise ConfigError(
                f"judges: {judge.name!r} compares with references, but data/prepared/eval_prompts.jsonl has no "
                "`reference` column"
            )
        return metric(responses, references)

    return score
