"""The detox and qa data builders on the real shipped data: disjoint pools, the corpus's duplicates removed, prompts
cut before the rude word, and requests the data cannot fill refused before anything is written."""

from __future__ import annotations

import json

import pytest

from recipes.detox.data import DetoxData
from recipes.qa.data import QAData
from rlhf_lib.config import ConfigError

pytestmark = pytest.mark.integration  # reads and scores the whole shipped corpora


@pytest.fixture(scope="module")
def qa_rows():
    return QAData(eval_prompts=64, ppo_prompts=128, preference_pairs=300).records()


def test_qa_questions_are_distinct_and_every_pool_is_disjoint(qa_rows):
    asked = lambda rows, key: [json.dumps(row[key][0]["content"].lower()) for row in rows]  # noqa: E731
    sft, ppo = asked(qa_rows["sft.jsonl"], "messages"), asked(qa_rows["ppo_prompts.jsonl"], "prompt")
    held_out = asked(qa_rows["eval_prompts.jsonl"], "prompt")
    assert len(held_out) == 64 and len(ppo) == 128 and len(sft) > 400
    everything = sft + ppo + held_out
    assert len(set(everything)) == len(everything)  # the corpus asks some questions more than once
    assert set(asked(qa_rows["preference.jsonl"], "prompt")) <= set(sft)
    for pair in qa_rows["preference.jsonl"]:
        assert pair["chosen"][0]["content"] != pair["rejected"][0]["content"]
    assert len({json.dumps(pair) for pair in qa_rows["preference.jsonl"]}) == 300  # validate refuses duplicates
    answers = {row["messages"][0]["content"]: row["messages"][1]["content"] for row in qa_rows["sft.jsonl"]}
    assert all(
        answers[pair["prompt"][0]["content"]] == pair["chosen"][0]["content"] for pair in qa_rows["preference.jsonl"]
    )


def test_detox_prompts_stop_just_before_the_sentence_turns_offensive():
    from profanity_check import predict_prob

    rows = DetoxData(sft_examples=100, preference_pairs=10, ppo_prompts=40, eval_prompts=20).records()
    prompts = [row["prompt"] for row in rows["ppo_prompts.jsonl"] + rows["eval_prompts.jsonl"]]
    assert len(set(prompts)) == 60 and max(predict_prob(prompts)) < 0.5
    sft = [row["text"] for row in rows["sft.jsonl"]]
    assert sum(p >= 0.8 for p in predict_prob(sft)) == 50  # toxic_share 0.5 of 100
    assert not set(sft) & {row["rejected"] for row in rows["preference.jsonl"]}


@pytest.mark.parametrize(
    ("builder", "message"),
    [
        (QAData(ppo_prompts=5000), "fewer than two of the corpus's"),
        (QAData(eval_prompts=300, ppo_prompts=420, preference_pairs=100), "give at most"),
        (DetoxData(sft_examples=10**6), "sft_examples and preference_pairs ask for more rows"),
        (DetoxData(ppo_prompts=10**5), "ppo_prompts and eval_prompts ask for more rows"),
    ],
)
def test_requests_the_data_cannot_fill_are_refused_before_writing(builder, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        builder.build(tmp_path)
    assert not list(tmp_path.iterdir())
