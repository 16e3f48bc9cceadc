"""Weighted reward mixtures, classifier scorers and `module:callable` imports, against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_lib.config import ModelConfig
from rlhf_lib.models.loading import load_sequence_scorer, load_tokenizer
from rlhf_lib.rewards import (
    ClassifierScorer,
    RewardModelScorer,
    RewardSource,
    RewardSourceError,
    WeightedReward,
    import_callable,
)

PROMPTS = ["the movie was", "a terrible", "i loved"]
RESPONSES = [" great fun", " film with a boring plot", " it"]


def words(prompts: list[str], responses: list[str]) -> list[float]:
    return [float(len(response.split())) for response in responses]


def _logits(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """Each text alone (no padding at all): the independent computation the batched scorers must match."""
    with torch.inference_mode():
        return torch.cat([model(**tokenizer(text, return_tensors="pt")).logits.float() for text in texts])


def test_mixture_of_a_function_and_a_model_is_the_weighted_sum_of_each_computed_by_hand(tiny_rm_dir):
    cfg = ModelConfig(name_or_path=tiny_rm_dir)
    model, tokenizer = load_sequence_scorer(cfg), load_tokenizer(cfg, padding_side="right")
    reward = WeightedReward(
        [RewardSource("model", RewardModelScorer(model, tokenizer), 0.5), RewardSource("length", words, -2.0)]
    )
    scores = reward(PROMPTS, RESPONSES)

    by_hand_model = _logits(model, tokenizer, [p + r for p, r in zip(PROMPTS, RESPONSES, strict=True)])[:, 0]
    by_hand_length = [2.0, 5.0, 1.0]
    assert scores.components["length"] == by_hand_length
    assert scores.components["model"] == pytest.approx(by_hand_model.tolist(), abs=1e-5)
    expected = [0.5 * m - 2.0 * n for m, n in zip(by_hand_model.tolist(), by_hand_length, strict=True)]
    assert list(scores) == pytest.approx(expected, abs=1e-5)
    assert torch.tensor(scores).shape == (3,)  # still usable as a plain list of floats


def test_classifier_scorer_gives_a_labels_probability_or_logit(tiny_rm_dir, tmp_path):
    cfg = ModelConfig(name_or_path=tiny_rm_dir)
    model = load_sequence_scorer(cfg, num_labels=2)
    model.config.id2label = {0: "negative", 1: "positive"}
    tokenizer = load_tokenizer(cfg, padding_side="right")
    logits = _logits(model, tokenizer, RESPONSES)
    probability = ClassifierScorer(model, tokenizer, label="POSITIVE", include_prompt=False)(PROMPTS, RESPONSES)
    assert probability == pytest.approx(logits.softmax(-1)[:, 1].tolist(), abs=1e-5)
    logit = ClassifierScorer(model, tokenizer, label=0, output="logit", include_prompt=False)(PROMPTS, RESPONSES)
    assert logit == pytest.approx(logits[:, 0].tolist(), abs=1e-5)
    with pytest.raises(RewardSourceError, match="'toxic' is not one of the classifier's labels"):
        ClassifierScorer(model, tokenizer, label="toxic")
    with pytest.raises(RewardSourceError, match="label 2 is out of range"):
        ClassifierScorer(model, tokenizer, label=2)


def test_a_baseline_response_makes_each_score_relative_to_the_same_prompts_baseline(tiny_rm_dir):
    cfg = ModelConfig(name_or_path=tiny_rm_dir)
    model, tokenizer = load_sequence_scorer(cfg), load_tokenizer(cfg, padding_side="right")
    prompts = [*PROMPTS, PROMPTS[0]]  # a repeated prompt gets the same baseline
    responses = [*RESPONSES, " dull"]
    relative = RewardModelScorer(model, tokenizer, baseline_response=" ok")(prompts, responses)

    absolute = _logits(model, tokenizer, [p + r for p, r in zip(prompts, responses, strict=True)])[:, 0]
    baseline = _logits(model, tokenizer, [p + " ok" for p in prompts])[:, 0]
    assert relative == pytest.approx((absolute - baseline).tolist(), abs=1e-5)
    assert RewardModelScorer(model, tokenizer, baseline_response=" ok")(PROMPTS, [" ok"] * 3) == pytest.approx(
        [0.0] * 3, abs=1e-6
    )
    with pytest.raises(RewardSourceError, match="needs include_prompt"):
        ClassifierScorer(model, tokenizer, label=0, include_prompt=False, baseline_response="")


def _raises(prompts, responses):
    raise KeyError("no such word")


@pytest.mark.parametrize(
    ("function", "message"),
    [
        (_raises, "'bad' raised KeyError"),
        (lambda p, r: [1.0], "'bad' returned 1 scores for 3 responses"),
        (lambda p, r: [1.0, math.nan, 0.0], "'bad' returned non-finite scores, e.g. \\[\\(1, nan\\)\\]"),
        (lambda p, r: [1.0, "high", 0.0], "'bad' must return a list of numbers"),
        (lambda p, r: None, "'bad' must return a list of numbers"),
    ],
    ids=["raises", "wrong-count", "non-finite", "not-a-number", "none"],
)
def test_a_bad_source_fails_naming_it(function, message):
    reward = WeightedReward([RewardSource("good", words), RewardSource("bad", function)])
    with pytest.raises(RewardSourceError, match=message):
        reward(PROMPTS, RESPONSES)


def test_mixture_needs_distinct_names_and_a_source():
    with pytest.raises(RewardSourceError, match="distinct"):
        WeightedReward([RewardSource("a", words), RewardSource("a", words)])
    with pytest.raises(RewardSourceError, match="at least one source"):
        WeightedReward([])


def test_import_callable_finds_functions_and_names_what_is_wrong():
    assert import_callable("tests.lib.test_rewards:words") is words
    assert import_callable("os.path:join") is __import__("os").path.join
    cases = {
        "tests.lib.test_rewards": "expected 'module.path:callable'",
        "no_such_module_xyz:f": "cannot import no_such_module_xyz",
        "tests.lib.test_rewards:nothing": "has no attribute 'nothing'",
        "tests.lib.test_rewards:PROMPTS": "PROMPTS is a list, not callable",
    }
    for reference, message in cases.items():
        with pytest.raises(RewardSourceError, match=message):
            import_callable(reference)


def test_probability_of_a_one_output_classifier_is_its_sigmoid(tiny_rm_dir):
    cfg = ModelConfig(name_or_path=tiny_rm_dir)
    model, tokenizer = load_sequence_scorer(cfg), load_tokenizer(cfg, padding_side="right")
    probability = ClassifierScorer(model, tokenizer, label=0, include_prompt=False)(PROMPTS, RESPONSES)
    assert probability == pytest.approx(_logits(model, tokenizer, RESPONSES)[:, 0].sigmoid().tolist(), abs=1e-5)
    assert len(set(probability)) == 3  # not the constant 1.0 a softmax over one logit gives
