"""Rewards from several sources, summed with weights; each source's scores are kept for logging.

A source is anything with the RewardFunction signature `f(prompts, responses) -> list[float]`: a trained reward
model (RewardModelScorer), any sequence classifier (ClassifierScorer) or a plain Python function named
`module:callable` (import_callable).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from rlhf_lib.config import ConfigError
from rlhf_lib.errors import RewardUnavailable

if TYPE_CHECKING:  # annotations only: transformers' model classes take ~4 s to import, which params checks need not pay
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

RewardFunction = Callable[[list[str], list[str]], list[float]]
"""f(prompts, responses) -> one score per response."""


class RewardSourceError(ValueError):
    """A reward source could not be imported or gave unusable scores; the message names the source."""


class ScoresWithComponents(list):
    """The weighted total per response (a plain list of floats) plus each source's own scores."""

    def __init__(self, total: list[float], components: dict[str, list[float]]) -> None:
        super().__init__(total)
        self.components = components


@dataclass(frozen=True)
class RewardSource:
    """One term of the reward: `weight * function(prompts, responses)`."""

    name: str
    function: RewardFunction
    weight: float = 1.0


class WeightedReward:
    """A RewardFunction that sums weighted sources and checks each one's output.

    Every source must return one finite number per response; anything else raises RewardSourceError naming the
    source, instead of a shape error or a NaN loss several steps later.
    """

    def __init__(self, sources: list[RewardSource]) -> None:
        if not sources:
            raise RewardSourceError("a reward needs at least one source")
        names = [source.name for source in sources]
        if len(set(names)) != len(names):
            raise RewardSourceError(f"reward source names must be distinct, got {names}")
        self.sources = sources

    def __call__(self, prompts: list[str], responses: list[str]) -> ScoresWithComponents:
        components = {
            source.name: checked_scores(source.name, source.function, prompts, responses) for source in self.sources
        }
        total = [
            sum(source.weight * components[source.name][i] for source in self.sources) for i in range(len(responses))
        ]
        return ScoresWithComponents(total, components)


def checked_scores(name: str, function: RewardFunction, prompts: list[str], responses: list[str]) -> list[float]:
    """`function(prompts, responses)`, or RewardSourceError naming source `name` if it raises or returns anything but
    one finite number per response. A ConfigError (a source that finds its own setup wrong) passes through."""
    try:
        scores = function(prompts, responses)
    except (ConfigError, RewardUnavailable):  # the user's setup, or no scores yet: the caller decides
        raise
    except Exception as err:
        raise RewardSourceError(f"{name!r} raised {type(err).__name__}: {err}") from err
    try:
        scores = [float(score) for score in scores]
    except (TypeError, ValueError) as err:
        raise RewardSourceError(f"{name!r} must return a list of numbers, got {type(scores).__name__}: {err}") from None
    if len(scores) != len(responses):
        raise RewardSourceError(f"{name!r} returned {len(scores)} scores for {len(responses)} responses")
    bad = [(i, score) for i, score in enumerate(scores) if not math.isfinite(score)]
    if bad:
        raise RewardSourceError(f"{name!r} returned non-finite scores, e.g. {bad[:3]}")
    return scores


def import_callable(reference: str, what: str = "function") -> Callable[..., Any]:
    """The callable named `module.path:attribute`, with errors that name the reference and the cause."""
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise RewardSourceError(f"{what} {reference!r}: expected 'module.path:callable'")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # a module that fails to import for any reason is the user's to see
        raise RewardSourceError(f"{what} {reference!r}: cannot import {module_name}: {err}") from err
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise RewardSourceError(f"{what} {reference!r}: {module_name} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise RewardSourceError(f"{what} {reference!r}: {attribute} is a {type(target).__name__}, not callable")
    return target


class ClassifierScorer:
    """A RewardFunction from any sequence classifier: one label's probability or logit for prompt + response.

    `label` is an index or a name from the model's `id2label` (e.g. "POSITIVE", "toxic"). With `baseline_response`
    (e.g. "" for saying nothing), each score is relative: the model's score of the response minus its score of the
    baseline response to the same prompt. That is a per-prompt baseline, so it leaves the policy gradient unbiased,
    and it removes the prompt's own share of the score; a reward model that scores a question in part for the
    question itself otherwise buries the response's share under prompt-to-prompt noise.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        label: int | str = 0,
        output: Literal["probability", "logit"] = "probability",
        include_prompt: bool = True,
        batch_size: int = 32,
        max_length: int = 512,
        baseline_response: str | None = None,
    ) -> None:
        if baseline_response is not None and not include_prompt:
            raise RewardSourceError("a baseline response is scored against each prompt, so it needs include_prompt")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.index = label_index(model, label)
        self.output = output
        self.include_prompt = include_prompt
        self.batch_size = batch_size
        self.max_length = max_length
        self.baseline_response = baseline_response

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        texts = [p + r for p, r in zip(prompts, responses, strict=True)] if self.include_prompt else list(responses)
        scores = self.score_texts(texts)
        if self.baseline_response is None:
            return scores
        distinct = list(dict.fromkeys(prompts))  # a batch may repeat a prompt; score its baseline once
        baseline = dict(zip(distinct, self.score_texts([p + self.baseline_response for p in distinct]), strict=True))
        return [score - baseline[prompt] for score, prompt in zip(scores, prompts, strict=True)]

    @torch.inference_mode()
    def score_texts(self, texts: list[str]) -> list[float]:
        """The chosen label's probability or logit for each full text."""
        device = next(self.model.parameters()).device
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            encoded = self.tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
                padding_side="right",  # sequence classifiers pool the last non-pad token
            ).to(device)
            logits = self.model(**encoded).logits.float()
            if self.output == "probability":  # one output: its sigmoid (a softmax over one logit is always 1)
                logits = logits.sigmoid() if logits.shape[-1] == 1 else logits.softmax(-1)
            chosen = logits
            scores.extend(chosen[:, self.index].tolist())
        return scores


class RewardModelScorer(ClassifierScorer):
    """A one-output reward model (any backbone and tokenizer): its logit for prompt + response."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        batch_size: int = 32,
        max_length: int = 512,
        baseline_response: str | None = None,
    ) -> None:
        super().__init__(
            model,
            tokenizer,
            label=0,
            output="logit",
            batch_size=batch_size,
            max_length=max_length,
            baseline_response=baseline_response,
        )


def label_index(model: PreTrainedModel, label: int | str) -> int:
    """The output index of `label` (an index, or a name in the model's id2label)."""
    num_labels = model.config.num_labels
    if isinstance(label, int):
        if not 0 <= label < num_labels:
            raise RewardSourceError(f"label {label} is out of range: the classifier has {num_labels} outputs")
        return label
    names = {str(name).lower(): int(index) for index, name in model.config.id2label.items()}
    if label.lower() not in names:
        raise RewardSourceError(f"label {label!r} is not one of the classifier's labels {sorted(names)}")
    return names[label.lower()]
