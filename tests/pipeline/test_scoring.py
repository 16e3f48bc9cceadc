"""Reward sources and judges as params.yaml names them: a ready-made classifier by path, with its own head and label
names; an embedding-similarity judge against references."""

from __future__ import annotations

import pytest
import torch
import yaml

from rlhf_lib.config import ConfigError, ModelConfig
from rlhf_lib.models.loading import load_encoder, load_sequence_scorer, load_tokenizer
from tasks.params import params_from_text
from tasks.scoring import build_judges, build_reward
from tests.pipeline.smoke_project import REPO_ROOT

PROMPTS = ["the movie was", "a terrible"]
RESPONSES = [" great fun", " film with a boring plot"]


def test_classifier_source_by_path_scores_its_named_label(tiny_rm_dir, tmp_path):
    backbone = ModelConfig(name_or_path=tiny_rm_dir)
    classifier = load_sequence_scorer(backbone, num_labels=3)
    classifier.config.id2label = {0: "NEG", 1: "NEUTRAL", 2: "POS"}
    classifier.config.label2id = {name: index for index, name in classifier.config.id2label.items()}
    classifier.save_pretrained(tmp_path / "classifier")
    tokenizer = load_tokenizer(backbone, padding_side="right")
    tokenizer.save_pretrained(tmp_path / "classifier")

    params = yaml.safe_load((REPO_ROOT / "profiles/smoke.yaml").read_text())
    source = {"name": "positive", "kind": "classifier", "model": {"name_or_path": str(tmp_path / "classifier")}}
    params["reward_sources"] = [source | {"label": "POS", "weight": 2.0}]
    reward = build_reward(params_from_text(yaml.safe_dump(params)))
    scores = reward(PROMPTS, RESPONSES)

    reloaded = load_sequence_scorer(ModelConfig(name_or_path=str(tmp_path / "classifier")), num_labels=None).eval()
    assert reloaded.config.num_labels == 3  # the checkpoint's own head, not a fresh one
    with torch.inference_mode():
        by_hand = [
            reloaded(**tokenizer(p + r, return_tensors="pt")).logits.softmax(-1)[0, 2].item()
            for p, r in zip(PROMPTS, RESPONSES, strict=True)
        ]
    assert scores.components["positive"] == pytest.approx(by_hand, abs=1e-5)
    assert list(scores) == pytest.approx([2.0 * value for value in by_hand], abs=1e-5)


def test_embedding_reference_judge_is_the_encoders_similarity_to_each_reference(tiny_rm_dir):
    params = yaml.safe_load((REPO_ROOT / "profiles/smoke.yaml").read_text())
    params["reward_model"] = {"name_or_path": tiny_rm_dir}  # the default encoder of an `embedding` judge
    params["judges"] = [{"name": "meaning", "kind": "reference", "metric": "embedding"}]
    params["tracking"]["promotion_judge"] = "meaning"
    judge = build_judges(params_from_text(yaml.safe_dump(params)))["meaning"]
    references = [" great fun", " a boring film"]
    scores = judge(PROMPTS, RESPONSES, references)

    encoder, tokenizer = (
        load_encoder(ModelConfig(name_or_path=tiny_rm_dir)),
        load_tokenizer(ModelConfig(name_or_path=tiny_rm_dir)),
    )
    with torch.inference_mode():
        embed = [
            encoder(**tokenizer(text, return_tensors="pt")).last_hidden_state[0].mean(0)
            for text in [*RESPONSES, *references]
        ]
    by_hand = [torch.cosine_similarity(embed[i], embed[i + 2], dim=0).item() for i in range(2)]
    assert scores == pytest.approx(by_hand, abs=1e-5)
    assert scores[0] == pytest.approx(1.0, abs=1e-5)  # the response is its reference
    with pytest.raises(ConfigError, match="no `reference` column"):
        judge(PROMPTS, RESPONSES, None)
