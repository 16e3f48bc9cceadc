"""`params.yaml`: every knob of the pipeline, validated as a whole before any stage does work."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from rlhf_lib.config import (
    ClassifierConfig,
    ConfigError,
    GenerationConfig,
    ModelConfig,
    PPOConfig,
    RewardConfig,
    SFTConfig,
    build_config,
    load_yaml,
)
from rlhf_lib.precision import default_bf16
from rlhf_lib.rewards import RewardSourceError, import_callable
from tasks.environment import EnvironmentSection, build_environment
from tasks.expectations import ValidateConfig
from tasks.prepare import PrepareConfig

# Stage outputs live at fixed places so dvc.yaml can name them; params.yaml must not move them.
DATA_DIR = Path("data/prepared")
MODELS_DIR = Path("models")
CHECKPOINTS_DIR = Path("checkpoints")
METRICS_DIR = Path("metrics")
REPORTS_DIR = Path("reports")
POLICY_PAIRS_FILE = Path("data/policy_pairs.jsonl")  # the `pairs` stage writes it, the `reward` stage reads it
C = TypeVar("C", bound=BaseModel)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class EvaluateConfig(_Section):
    """Held-out comparison of the SFT and PPO policies."""

    num_prompts: int = Field(64, gt=0)
    """Evaluation prompts to use (from data/prepared/eval_prompts.jsonl)."""
    samples_per_prompt: int = Field(1, ge=1)
    """Responses each policy samples for every prompt. The judges and the proxy reward score them all; each judge's
    scores are averaged per prompt before the paired bootstrap, which resamples prompts, so sampling noise is a
    smaller part of the interval's width. KL, perplexity, length and distinct-2 use each prompt's first response,
    so they mean the same whatever this is."""
    generation: GenerationConfig = GenerationConfig()
    """Sampling settings shared by both policies; temperature > 0 and no top-k/top-p, because the KL that gates
    promotion is estimated from these samples."""
    bootstrap_samples: int = Field(2000, ge=100)
    """Paired-bootstrap resamples behind each judge's 95% interval on the PPO - SFT difference."""
    ppo_eval_prompts: int = Field(16, gt=0)
    """Evaluation prompts the judges score during PPO, every `ppo.eval_steps` iterations (when that is set)."""

    @model_validator(mode="after")
    def _samples_give_an_unbiased_kl(self) -> EvaluateConfig:
        sampling = self.generation
        if sampling.temperature <= 0 or sampling.top_k or sampling.top_p < 1.0:
            raise ValueError(
                "generation: the KL(PPO || SFT) gate is estimated from these samples, which needs plain sampling "
                f"(temperature > 0, top_k 0, top_p 1.0); got temperature {sampling.temperature}, top_k "
                f"{sampling.top_k}, top_p {sampling.top_p}"
            )
        return self


class HumanFeedbackConfig(_Section):
    """Preference labels people gave on the labelling page (`rlhf label serve`)."""

    preferences: str = "data/human/preferences.jsonl"
    """The labels file (a dependency of the `reward` stage): pairs labelled A or B join the reward model's
    training pairs; ties and skips carry no preference and are left out."""
    upsample: int = Field(1, ge=0)
    """How many times each human pair enters the reward model's training set (0 leaves the labels out)."""


class PolicyPairsConfig(_Section):
    """Preference pairs from the SFT policy's own answers (the `pairs` stage), added to the reward model's training
    pairs: for each training prompt of data/prepared/preference.jsonl the SFT policy samples a few answers, a
    reference metric scores them and the prompt's chosen answer against that chosen answer, and every two whose
    scores differ by at least `min_gap` become a pair (the better one chosen)."""

    samples_per_prompt: int = Field(4, gt=0)
    """Answers the SFT policy samples for each prompt."""
    max_prompts: int | None = Field(None, gt=0)
    """Distinct training prompts to sample for, in file order; None: all of them."""
    metric: Literal["chrf", "embedding"] = "embedding"
    """How an answer is scored against the chosen one: as a `reference` judge scores (chrF 0-100, or cosine -1..1
    of sentence embeddings under `model`)."""
    model: ModelConfig | None = None
    """The sentence encoder of `embedding`; None: the reward_model backbone."""
    min_gap: float = Field(0.15, gt=0)
    """Least score difference that makes two answers a pair (on the metric's scale)."""
    generation: GenerationConfig = GenerationConfig(max_new_tokens=32, temperature=1.0, batch_size=64)
    """How the answers are sampled; PPO samples at its own temperature, so match `ppo.temperature` for a reward
    model that ranks what PPO will show it."""
    upsample: int = Field(1, ge=0)
    """How many times each pair enters the reward model's training set (0 leaves them out)."""


LAUNCHABLE_STAGES = ("sft", "reward", "judge", "ppo")


def accelerate_config_kind(path: Path) -> str:
    """The `distributed_type` of an accelerate config file (MULTI_GPU, FSDP, DEEPSPEED, ...)."""
    if not path.is_file():
        raise ValueError(f"launch.config_file: {path} does not exist")
    return str((yaml.safe_load(path.read_text()) or {}).get("distributed_type", "NO"))


class LaunchConfig(_Section):
    """How many processes the training stages run in (data parallel, through `accelerate launch`)."""

    num_processes: int = Field(1, gt=0)
    """Processes per training stage: 1 runs the stage in the `rlhf stage` process itself; N > 1 has `rlhf stage`
    start N under `accelerate launch` (one per GPU, or CPU processes over gloo where there is no CUDA). PPO's
    batch_size must be divisible by num_mini_batches x N; SFT, reward and judge batches are per process."""
    config_file: str | None = None
    """An `accelerate config` file (for example configs/accelerate/fsdp.yaml) for the launch; None: plain data
    parallel on this machine. num_processes above overrides the file's."""
    stages: list[Literal["sft", "reward", "judge", "ppo"]] = list(LAUNCHABLE_STAGES)
    """The training stages that launch N processes; the others always run in one."""


class TrackingConfig(_Section):
    """MLflow settings."""

    recipe: str = Field("custom", pattern=r"^[A-Za-z0-9_.-]+$")
    """The task these params are for, tagged `rlhf.recipe` on every MLflow run and registered model version, so
    runs of one task can be compared (`tags.rlhf.recipe = 'detox'`) and never mixed with another's."""
    experiment: str = "rlhf-pipeline"
    """MLflow experiment of the pipeline runs."""
    log_models: bool = True
    """Log the reward model and the PPO policy as MLflow models and register them."""
    policy_model_name: str = "rlhf-policy"
    """Registered model name of the PPO policy."""
    reward_model_name: str = "rlhf-reward-model"
    """Registered model name of the reward model."""
    fallback_to_local: bool = False
    """If the MLflow server in MLFLOW_TRACKING_URI is unreachable, log to sqlite:///mlflow.db instead of failing."""
    outage_wait_s: float = Field(300.0, ge=0)
    """How long the end of a stage waits for an MLflow server that went away during it (metric points logged
    meanwhile are kept in memory) before the stage fails naming the server."""
    approval: bool = False
    """A person approves each new champion: a candidate the promotion rule would promote stays `candidate`, tagged
    `approval: pending`, and the Prefect flow pauses for an answer (approve or reject) with the evaluation summary.
    Runs outside the flow (`dvc repro`) leave it pending for the next flow run."""
    approval_timeout_s: int = Field(3600, gt=0)
    """How long the flow waits for that answer; with none, nothing is promoted."""
    promotion_kl_budget: float = Field(5.0, gt=0)
    """Most KL(PPO || SFT) per response (nats) a candidate may have to become champion."""
    promotion_judge: str | None = None
    """The judge (a name in `judges`) whose paired-bootstrap interval on PPO - SFT must lie above zero for a
    candidate to become champion; None: the first judge."""


class _Source(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """Name in metrics (`ppo/reward/<name>`, `eval/judge/<name>/...`): letters, digits, `_`, `.`, `-`."""


class TrainedSource(_Source):
    """The classifier a pipeline stage trains: the `reward` stage's reward model, or the `judge` stage's judge."""

    kind: Literal["trained"]


class ClassifierSource(_Source):
    """Any sequence classifier by local path or Hub name: one label's probability or logit."""

    kind: Literal["classifier"]
    model: ModelConfig
    """Where the classifier and its tokenizer come from."""
    label: int | str = 1
    """Output index, or a label name from the model's id2label (e.g. "POSITIVE")."""
    output: Literal["probability", "logit"] = "probability"
    """Softmax probability of the label, or its raw logit."""
    include_prompt: bool = True
    """Score prompt + response (True) or the response alone."""


class FunctionSource(_Source):
    """A Python function `f(prompts, responses) -> list[float]`, named `module.path:callable`."""

    kind: Literal["function"]
    function: str
    """`module.path:callable`, importable from the project folder (e.g. `recipes.sentiment.judges:vader`)."""


class ReferenceSource(_Source):
    """A reference-based metric, for evaluation rows that carry a `reference` (judges only)."""

    kind: Literal["reference"]
    metric: Literal["chrf", "embedding"] = "chrf"
    """`chrf`: sacrebleu's sentence-level chrF (0-100) of the response against the row's reference; `embedding`:
    cosine similarity (-1..1) of the two texts' mean-pooled embeddings under `model`."""
    model: ModelConfig | None = None
    """The sentence encoder of `embedding` (e.g. all-MiniLM-L6-v2); None: the reward_model backbone."""

    @model_validator(mode="after")
    def _model_only_for_embedding(self) -> ReferenceSource:
        if self.model is not None and self.metric != "embedding":
            raise ValueError(f"`model` is the encoder of metric `embedding`; metric {self.metric!r} uses none")
        return self


class _Weighted(_Section):
    weight: float = 1.0
    """Weight of this source in the reward sum."""


class _Baselined(_Section):
    baseline_response: str | None = None
    """Score each response relative to this fixed response to the same prompt (e.g. "" for saying nothing): a
    per-prompt baseline that leaves the gradient unbiased and removes the prompt's own share of the score, which
    can dwarf the response's (a question/answer reward model); None scores responses as they are."""


class TrainedReward(TrainedSource, _Weighted, _Baselined):
    """The reward model the `reward` stage trains on data/prepared/preference.jsonl (its logit)."""


class ClassifierReward(ClassifierSource, _Weighted, _Baselined):
    """A sequence classifier's label probability or logit, weighted."""


class FunctionReward(FunctionSource, _Weighted):
    """A Python reward function, weighted."""


class HumanReward(_Source, _Weighted):
    """People rate each PPO batch's responses from 1 to 5 on the rating page (`rlhf label serve`, then /rate) and
    PPO waits for them; a rating r scores (r - 3) / 2, from -1 to 1. For small, supervised experiments."""

    kind: Literal["human"]
    folder: str = "data/human"
    """Where the rating requests and the ratings are kept: the folder of the labels file `rlhf label serve` uses."""
    timeout_s: float = Field(900.0, gt=0)
    """How long PPO waits for one batch's ratings."""
    on_timeout: Literal["stop", "skip"] = "stop"
    """stop: the stage fails after a checkpoint of the steps done, and a rerun asks for the same batch again
    (ratings given are kept); skip: the batch is skipped and counted (`ppo/skipped_batches`)."""


RewardEntry = Annotated[TrainedReward | ClassifierReward | FunctionReward | HumanReward, Field(discriminator="kind")]
JudgeEntry = Annotated[TrainedSource | ClassifierSource | FunctionSource | ReferenceSource, Field(discriminator="kind")]
TRAINER_SECTIONS = {"sft": SFTConfig, "reward": RewardConfig, "ppo": PPOConfig, "judge": ClassifierConfig}


class PipelineParams(_Section):
    """The whole of params.yaml."""

    seed: int = 0
    """Global seed; the sft, reward, judge and ppo sections take it unless they set their own."""
    prepare: PrepareConfig
    """Where the data comes from: a recipe's builder, or dataset sources in the TRL formats."""
    validate_data: ValidateConfig = Field(ValidateConfig(), alias="validate")
    """Great Expectations bounds for every dataset."""
    policy: ModelConfig
    """Base policy model (its tokenizer is the policy's)."""
    reward_model: ModelConfig
    """Backbone of the trained reward model (may have its own tokenizer)."""
    sft: SFTConfig
    """SFTConfig fields except output_dir (see rlhf_lib.config.SFTConfig)."""
    reward: RewardConfig
    """RewardConfig fields except output_dir (training of the reward model)."""
    human_feedback: HumanFeedbackConfig = HumanFeedbackConfig()
    """Human preference labels merged into the reward model's training pairs."""
    policy_pairs: PolicyPairsConfig | None = None
    """Pairs of the SFT policy's own answers, ranked against each prompt's chosen answer, added to the reward
    model's training pairs; None: the `pairs` stage writes none."""
    reward_sources: list[RewardEntry] = [TrainedReward(name="reward_model", kind="trained")]
    """The reward PPO maximises: the weighted sum of these sources (`kind`: trained, classifier or function), each
    logged as ppo/reward/<name>. The `reward` stage trains a model only when a source is `trained`."""
    ppo: PPOConfig
    """PPOConfig fields except output_dir."""
    judge_model: ModelConfig | None = None
    """Backbone of the trained judge; None reuses reward_model's backbone."""
    judge: ClassifierConfig
    """ClassifierConfig fields except output_dir (training of the judge)."""
    judges: list[JudgeEntry] = [TrainedSource(name="judge", kind="trained")]
    """What decides whether PPO beat SFT. A `trained` judge is the classifier the `judge` stage trains (its score
    is P(label 1)); the `judge` stage is skipped when no judge is `trained`."""
    environment: EnvironmentSection | None = None
    """Tools the policy may call during PPO (calculator, search, any `module:callable`); None: plain generation."""
    evaluate: EvaluateConfig = EvaluateConfig()
    """Evaluation settings."""
    tracking: TrackingConfig = TrackingConfig()
    """MLflow settings."""
    launch: LaunchConfig = LaunchConfig()
    """Processes per training stage (`accelerate launch`)."""

    @model_validator(mode="before")
    @classmethod
    def _fill_trainer_sections(cls, data: Any) -> Any:
        """Each trainer section gets its fixed output folder and, unless it sets one, the global seed."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name in TRAINER_SECTIONS:
            section = data.get(name) or {}
            if not isinstance(section, dict):
                continue  # pydantic names the section and the type it got
            if "output_dir" in section:
                raise ValueError(f"{name}.output_dir: set by the pipeline ({CHECKPOINTS_DIR / name}); remove it")
            data[name] = {"seed": data.get("seed", 0), **section, "output_dir": str(CHECKPOINTS_DIR / name)}
        return data

    @model_validator(mode="after")
    def _names_are_consistent(self) -> PipelineParams:
        for what, names in (("reward_sources", [r.name for r in self.reward_sources]), ("judges", self.judge_names())):
            if not names:
                raise ValueError(f"{what}: name at least one")
            if len(set(names)) != len(names):
                raise ValueError(f"{what}: names must be distinct, got {names}")
        if self.prepare.builder is None:  # with a builder, the recipe's builder knows what it writes
            needs = {
                "preference": ("a reward source is `trained`", self.trains_reward_model()),
                "judge": ("a judge is `trained`", self.trains_judge()),
                "evaluation": (
                    "a judge compares with references, which only an evaluation source can carry",
                    any(isinstance(judge, ReferenceSource) for judge in self.judges),
                ),
            }
            for key, (reason, needed) in needs.items():
                if needed and getattr(self.prepare, key) is None:
                    raise ValueError(f"prepare.{key}: {reason}, so name a source for it")
        if self.tracking.promotion_judge is not None and self.tracking.promotion_judge not in self.judge_names():
            wanted = self.tracking.promotion_judge
            raise ValueError(f"tracking.promotion_judge: {wanted!r} is not one of the judges {self.judge_names()}")
        if self.ppo.eval_steps and any(isinstance(source, HumanReward) for source in self.reward_sources):
            raise ValueError(
                "ppo.eval_steps: the held-out evaluation during PPO scores with the reward, so people would be asked "
                "to rate its samples too; set it to null with a `human` reward source"
            )
        return self

    @model_validator(mode="after")
    def _launch_fits_ppo(self) -> PipelineParams:
        """What PPOTrainer would refuse in N processes, refused before any stage runs."""
        launch, ppo = self.launch, self.ppo
        if "ppo" not in launch.stages:
            return self
        processes = launch.num_processes
        if ppo.batch_size % (ppo.num_mini_batches * processes):
            raise ValueError(
                f"launch.num_processes: ppo.batch_size ({ppo.batch_size}) must be divisible by ppo.num_mini_batches x "
                f"launch.num_processes ({ppo.num_mini_batches} x {processes}), so every process takes an equal share"
            )
        if ppo.eval_steps and self.evaluate.ppo_eval_prompts < processes:
            raise ValueError(
                f"launch.num_processes: evaluate.ppo_eval_prompts ({self.evaluate.ppo_eval_prompts}) cannot be shared "
                f"between {processes} processes"
            )
        if launch.config_file:
            kind = accelerate_config_kind(Path(launch.config_file))
            if kind in ("FSDP", "DEEPSPEED"):
                raise ValueError(
                    f"launch.stages: PPO runs data parallel only, not under {kind} ({launch.config_file}); "
                    "leave ppo out of launch.stages, or use configs/accelerate/multi_gpu.yaml"
                )
        return self

    def judge_names(self) -> list[str]:
        return [judge.name for judge in self.judges]

    def promotion_judge(self) -> str:
        return self.tracking.promotion_judge or self.judges[0].name

    def trains_reward_model(self) -> bool:
        return any(isinstance(source, TrainedSource) for source in self.reward_sources)

    def trains_judge(self) -> bool:
        return any(isinstance(judge, TrainedSource) for judge in self.judges)

    def judge_backbone(self) -> ModelConfig:
        return self.judge_model or self.reward_model.model_copy(update={"lora": None})


def with_output_dir(config: C, output_dir: Path) -> C:
    """`config` with another output folder, validated again (model_copy would skip validation)."""
    return type(config).model_validate(config.model_dump() | {"output_dir": str(output_dir)})


def checkpoint_dir(stage: str, settings: Any, inputs: list[Path]) -> Path:
    """Checkpoints of one stage for one set of settings and inputs.

    A rerun with the same settings and inputs resumes; a changed param or dataset starts afresh
    instead of resuming someone else's run. Files are hashed by content, folders by their
    files' names, sizes and mtimes (hashing 500 MB of weights would cost seconds per stage).
    """
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in inputs:
        if path.is_file():
            digest.update(path.read_bytes())
        for file in sorted(path.rglob("*")) if path.is_dir() else []:
            stat = file.stat()
            digest.update(f"{file.relative_to(path)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return CHECKPOINTS_DIR / stage / digest.hexdigest()[:12]


def load_params(path: str | Path = "params.yaml") -> PipelineParams:
    """Read and validate params.yaml, including every trainer section, naming any bad key."""
    return _validated(load_yaml(path))


def params_from_text(text: str) -> PipelineParams:
    """Validate the text of a params file (e.g. a profile with overrides) before it is written anywhere."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"params are not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError("params: expected a YAML mapping at the top level")
    return _validated(data)


def _validated(data: dict[str, Any]) -> PipelineParams:
    params = build_config(PipelineParams, data, "")
    for index, source in enumerate(params.reward_sources):
        _require_importable(source, f"reward_sources[{index}].function")
    for index, judge in enumerate(params.judges):
        _require_importable(judge, f"judges[{index}].function")
    build_environment(params.environment)  # a tool that does not import, or a missing corpus, fails here
    default_bf16()  # a bad RLHF_DEFAULT_PRECISION fails here too, before any model loads
    return params


def _require_importable(source: Any, key: str) -> None:
    if isinstance(source, FunctionSource):
        try:
            import_callable(source.function)
        except RewardSourceError as err:
            raise ConfigError(f"{key}: {err}") from None
