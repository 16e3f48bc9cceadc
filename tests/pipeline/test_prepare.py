"""Prepare stage: counts, row-disjoint pools, determinism and size errors, on a synthetic and the real source."""

from __future__ import annotations

import json
import random

import pandas as pd
import pytest

from recipes.sentiment.data import PREPARED_FILES, SentimentData, excerpt, prepare_datasets
from rlhf_lib.config import ConfigError, build_config
from rlhf_lib.data.sources import movie_reviews_csv

SIZES = {
    "sft_examples": 40,
    "preference_pairs": 30,
    "ppo_prompts": 20,
    "eval_prompts": 10,
    "judge_train": 60,
    "judge_test": 20,
}
WORDS = ["the", "a", "film", "movie", "plot", "acting", "great", "awful", "dull", "moving", "story", "cast", "slow"]


def write_reviews_csv(path, with_source: bool = True):
    """300 rows like the movie-reviews package: 200 long IMDb reviews with <br /> tags, 100 short RT sentences."""
    rng = random.Random(0)
    rows = []
    for i in range(300):
        imdb = i < 200
        words = [rng.choice(WORDS) for _ in range(120 if imdb else 12)]
        body = " ".join(words[:40]) + " <br /><br />" + " ".join(words[40:]) if imdb else " ".join(words)
        rows.append({"text": f"Review{i} {body}", "label": i % 2, "source": "imdb" if imdb else "rotten_tomatoes"})
    rows.append(dict(rows[0]))  # the real package repeats some reviews too
    frame = pd.DataFrame(rows)
    if not with_source:
        frame = frame.drop(columns="source")
    frame.to_csv(path, index=False)
    return path


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def read_all(out_dir) -> dict[str, list[dict]]:
    return {name: read_jsonl(out_dir / name) for name in PREPARED_FILES}


@pytest.fixture
def source_csv(tmp_path):
    return write_reviews_csv(tmp_path / "reviews.csv")


def test_counts_columns_and_contents(tmp_path, source_csv):
    cfg = SentimentData(source=str(source_csv), **SIZES)
    counts = prepare_datasets(cfg, tmp_path / "out")
    data = read_all(tmp_path / "out")

    expected = dict(zip(PREPARED_FILES, [40, 30, 20, 10, 60, 20], strict=True))
    assert counts == expected
    assert {name: len(rows) for name, rows in data.items()} == expected
    columns = {"sft.jsonl": {"text"}, "preference.jsonl": {"prompt", "chosen", "rejected"}}
    columns |= {"ppo_prompts.jsonl": {"prompt"}, "eval_prompts.jsonl": {"prompt"}}
    columns |= {"judge_train.jsonl": {"text", "label"}, "judge_test.jsonl": {"text", "label"}}
    for name, rows in data.items():
        assert all(set(row) == columns[name] for row in rows), name

    source = pd.read_csv(source_csv)
    label_of = {excerpt(text, cfg.max_chars): label for text, label in zip(source.text, source.label, strict=True)}
    imdb = {excerpt(text, cfg.max_chars) for text in source.text[source.source == "imdb"]}
    for row in data["sft.jsonl"]:
        assert row["text"] in imdb and "<br" not in row["text"] and len(row["text"]) <= cfg.max_chars
    for row in data["preference.jsonl"]:
        assert row["prompt"] == "" and label_of[row["chosen"]] == 1 and label_of[row["rejected"]] == 0
    for name in ("ppo_prompts.jsonl", "eval_prompts.jsonl"):
        assert all(cfg.prompt_min_words <= len(row["prompt"].split()) <= cfg.prompt_max_words for row in data[name])
    for name in ("judge_train.jsonl", "judge_test.jsonl"):
        assert all(row["text"] not in imdb and label_of[row["text"]] == row["label"] for row in data[name])
        assert 0.2 < sum(row["label"] for row in data[name]) / len(data[name]) < 0.8


def _assert_disjoint(data: dict[str, list[dict]]) -> None:
    sft = [row["text"] for row in data["sft.jsonl"]]
    pairs = [(row["chosen"], row["rejected"]) for row in data["preference.jsonl"]]
    preference = [text for pair in pairs for text in pair]
    ppo = [row["prompt"] for row in data["ppo_prompts.jsonl"]]
    evaluation = [row["prompt"] for row in data["eval_prompts.jsonl"]]
    judge = [row["text"] for name in ("judge_train.jsonl", "judge_test.jsonl") for row in data[name]]

    for texts in (sft, preference, ppo, evaluation, judge):
        assert len(set(texts)) == len(texts)
    assert all(chosen != rejected for chosen, rejected in pairs)
    assert not set(sft) & set(preference)
    assert not set(ppo) & set(evaluation)
    assert not set(judge) & (set(sft) | set(preference))


def test_pools_are_disjoint(tmp_path, source_csv):
    prepare_datasets(SentimentData(source=str(source_csv), **SIZES), tmp_path / "out")
    data = read_all(tmp_path / "out")
    _assert_disjoint(data)
    # Each synthetic review opens with a unique "Review<i>", so a prompt names the review it was cut from:
    # none may come from a review that SFT or the reward model saw.
    seen = {row["text"].split()[0] for row in data["sft.jsonl"]}
    seen |= {row[key].split()[0] for row in data["preference.jsonl"] for key in ("chosen", "rejected")}
    prompts = data["ppo_prompts.jsonl"] + data["eval_prompts.jsonl"]
    assert not {row["prompt"].split()[0] for row in prompts} & seen


def test_without_source_column_the_judge_gets_the_leftover_reviews(tmp_path):
    csv = write_reviews_csv(tmp_path / "plain.csv", with_source=False)
    counts = prepare_datasets(SentimentData(source=str(csv), **SIZES), tmp_path / "out")
    data = read_all(tmp_path / "out")
    assert counts["judge_train.jsonl"] == 60 and counts["judge_test.jsonl"] == 20
    _assert_disjoint(data)
    judge_texts = {row["text"] for name in ("judge_train.jsonl", "judge_test.jsonl") for row in data[name]}
    assert not judge_texts & {row["text"] for row in data["sft.jsonl"]}


def test_same_seed_gives_byte_identical_files(tmp_path, source_csv):
    for run in ("a", "b"):
        prepare_datasets(SentimentData(source=str(source_csv), **SIZES), tmp_path / run)
    prepare_datasets(SentimentData(source=str(source_csv), seed=1, **SIZES), tmp_path / "other")
    for name in PREPARED_FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert (tmp_path / "a" / "sft.jsonl").read_bytes() != (tmp_path / "other" / "sft.jsonl").read_bytes()


@pytest.mark.parametrize("key", list(SIZES))
def test_sizes_beyond_the_source_name_the_key_and_keep_earlier_outputs(tmp_path, source_csv, key):
    out_dir = tmp_path / "out"
    prepare_datasets(SentimentData(source=str(source_csv), **SIZES), out_dir)
    before = {name: (out_dir / name).read_bytes() for name in PREPARED_FILES}

    with pytest.raises(ConfigError, match=rf"prepare\.{key}: 1000 requested"):
        prepare_datasets(SentimentData(source=str(source_csv), **(SIZES | {key: 1000})), out_dir)
    assert {name: (out_dir / name).read_bytes() for name in PREPARED_FILES} == before


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"sft_exmples": 5}, "prepare.sft_exmples: unknown key"),
        ({"eval_prompts": 0}, "prepare.eval_prompts"),
        ({"prompt_min_words": 9}, "prompt_min_words (9) must not exceed prompt_max_words (8)"),
    ],
)
def test_bad_params_are_config_errors(mapping, message):
    with pytest.raises(ConfigError) as err:
        build_config(SentimentData, mapping, section="prepare")
    assert message in str(err.value)


def test_source_without_labels_is_rejected(tmp_path):
    csv = tmp_path / "unlabelled.csv"
    pd.DataFrame({"text": ["a b c", "d e f"]}).to_csv(csv, index=False)
    with pytest.raises(ConfigError, match=r"prepare\.source: .* lacks the column\(s\) \['label'\]"):
        prepare_datasets(SentimentData(source=str(csv), **SIZES), tmp_path / "out")


@pytest.mark.parametrize(
    ("text", "max_chars", "expected"),
    [
        ("one two<br /><br />three", 400, "one two three"),
        ("  spaced \n\t out  ", 400, "spaced out"),
        ("alpha beta gamma", 12, "alpha beta"),
        ("alpha beta gamma", 10, "alpha beta"),
        ("abcdefghij klm", 5, "abcde"),
    ],
)
def test_excerpt_cleans_and_cuts_at_a_word_boundary(text, max_chars, expected):
    assert excerpt(text, max_chars) == expected


def test_real_movie_reviews_source(tmp_path):
    sizes = {"sft_examples": 50, "preference_pairs": 50, "ppo_prompts": 40, "eval_prompts": 20}
    cfg = SentimentData(judge_train=100, judge_test=50, **sizes)
    counts = prepare_datasets(cfg, tmp_path / "out")
    data = read_all(tmp_path / "out")
    assert counts == dict(zip(PREPARED_FILES, [50, 50, 40, 20, 100, 50], strict=True))
    _assert_disjoint(data)

    package = pd.read_csv(movie_reviews_csv())
    rotten = {excerpt(text, cfg.max_chars) for text in package.text[package.source == "rotten_tomatoes"]}
    assert all(row["text"] in rotten for name in ("judge_train.jsonl", "judge_test.jsonl") for row in data[name])
    assert not any("<br" in row["text"] or len(row["text"]) > cfg.max_chars for row in data["sft.jsonl"])
