"""The calculator recipe's problems and scoring: disjoint pools, demonstrations with and without the tool, and
answers read back exactly (tool answers never count as the policy's)."""

from __future__ import annotations

import json

import pytest

from recipes.calculator.arithmetic import correct, final_answer, solve, tool_calls
from recipes.calculator.data import CalculatorData


def test_problems_are_distinct_disjoint_and_their_demonstrations_are_right():
    rows = CalculatorData(sft_examples=200, tool_share=0.3, ppo_prompts=100, eval_prompts=50).records()
    question = lambda row: row["prompt"][0]["content"]  # noqa: E731
    sft, ppo, held_out = (
        [question(row) for row in rows[name]] for name in ("sft.jsonl", "ppo_prompts.jsonl", "eval_prompts.jsonl")
    )
    assert (len(set(sft)), len(set(ppo)), len(set(held_out))) == (200, 100, 50)
    assert not (set(sft) & set(ppo) or set(sft) & set(held_out) or set(ppo) & set(held_out))
    completions = [row["completion"][0]["content"] for row in rows["sft.jsonl"]]
    for row, completion in zip(rows["sft.jsonl"], completions, strict=True):
        assert correct([question(row)], [completion]) == [1.0]
    with_tool = sum("<call>calculator:" in completion for completion in completions)
    assert 0.2 < with_tool / len(completions) < 0.4  # tool_share 0.3
    assert rows == CalculatorData(sft_examples=200, tool_share=0.3, ppo_prompts=100, eval_prompts=50).records()
    assert json.dumps(rows) != json.dumps(CalculatorData(seed=1, sft_examples=200).records())


@pytest.mark.parametrize(
    ("response", "answer"),
    [
        ("Answer: 42", 42),
        ("<call>calculator: 6 * 7</call><result>42</result> Answer: 42", 42),
        ("<call>calculator: 6 * 7</call><result>Answer: 42</result> so", None),  # a tool's text is not an answer
        ("Answer: 40 ... no, Answer: -2", -2),
        ("forty-two", None),
    ],
)
def test_the_final_answer_is_the_policys_last_one(response, answer):
    assert final_answer(response) == answer


def test_reward_and_judge_compare_with_the_computed_truth():
    prompt = "<|im_start|>user\nThere are 871 boxes with 60 pencils in each. How many pencils are there?\n..."
    assert solve(prompt) == 871 * 60 and solve("what is love?") is None
    responses = ["Answer: 52260", "Answer: 52261", "<call>calculator: 871*60</call><result>52260</result>"]
    assert correct([prompt] * 3, responses) == [1.0, 0.0, 0.0]
    assert correct(["what is love?"], ["Answer: 1"]) == [0.0]
    assert tool_calls([prompt] * 3, responses) == [0.0, 0.0, 1.0]
