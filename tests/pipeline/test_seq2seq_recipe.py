"""The seq2seq recipe's task and model: numbers spelled right (checked by reading them back), disjoint pools, the
scoring functions, and a built T5 whose tokenizer reads every digit and round-trips every answer."""

from __future__ import annotations

import json

import pytest

from recipes.seq2seq.data import NumberWordsData
from recipes.seq2seq.model import build_t5
from recipes.seq2seq.numbers import LARGEST, chrf, exact, prompt_for, reference, spell
from rlhf_lib.config import ConfigError

_VALUES = {
    word: i
    for i, word in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
        ]
    )
}
_VALUES |= {
    word: 10 * i
    for i, word in enumerate(["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"])
    if i >= 2
}


def _read(words: str) -> int:
    """Words back to a number, independently of `spell`: a running group, x100 and x1000 as they come."""
    total, group = 0, 0
    for word in words.split():
        if word == "hundred":
            group *= 100
        elif word == "thousand":
            total, group = total + group * 1000, 0
        else:
            group += _VALUES[word]
    return total + group


@pytest.mark.parametrize("n", [0, 5, 12, 19, 20, 21, 99, 100, 101, 110, 999, 1000, 1001, 10010, 40317, 100000, LARGEST])
def test_spelled_numbers_read_back(n):
    assert _read(spell(n)) == n


def test_every_thousandth_number_reads_back_and_nothing_has_stray_words():
    for n in range(0, LARGEST + 1, 997):
        words = spell(n).split()
        assert _read(" ".join(words)) == n
        assert "zero" not in words or n == 0
    with pytest.raises(ValueError, match="outside"):
        spell(LARGEST + 1)


def test_pools_are_disjoint_deterministic_and_right():
    data = NumberWordsData(sft_examples=300, ppo_prompts=100, eval_prompts=50)
    rows = data.records()
    sft, ppo, held_out = (
        {row["prompt"] for row in rows[name]} for name in ("sft.jsonl", "ppo_prompts.jsonl", "eval_prompts.jsonl")
    )
    assert (len(sft), len(ppo), len(held_out)) == (300, 100, 50)
    assert not (sft & ppo or sft & held_out or ppo & held_out)
    assert all(exact([row["prompt"]], [row["completion"]]) == [1.0] for row in rows["sft.jsonl"])
    assert all(row["reference"] == reference(row["prompt"]) for row in rows["eval_prompts.jsonl"])
    assert rows == data.records()
    assert json.dumps(rows) != json.dumps(NumberWordsData(seed=1, sft_examples=300, ppo_prompts=100).records())
    with pytest.raises(ConfigError, match="distinct numbers"):
        NumberWordsData(sft_examples=LARGEST, ppo_prompts=10).records()


def test_scores_exact_and_partial_answers():
    prompt = prompt_for(40317)
    right, slip = "forty thousand three hundred seventeen", "forty thousand three hundred seventy"
    assert exact([prompt] * 3, [right, f"  {right} ", slip]) == [1.0, 1.0, 0.0]
    full, partial, wrong = chrf([prompt] * 3, [right, slip, "nine"])
    assert full == pytest.approx(1.0) and 0.5 < partial < 1.0 and wrong < 0.2
    assert exact(["no number here"], [right]) == [0.0]


def test_built_t5_reads_digits_one_by_one_and_round_trips_answers(tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    build_t5(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert model.config.is_encoder_decoder and 0.5e6 < model.num_parameters() < 2e6
    assert tokenizer.tokenize(prompt_for(40317))[-5:] == ["4", "0", "3", "1", "7"]
    assert tokenizer(prompt_for(7))["input_ids"][-1] == tokenizer.eos_token_id  # T5's convention
    for n in (0, 17, 40317, LARGEST):
        ids = tokenizer(spell(n), add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == spell(n)
