"""Embedding similarity: padded batches give what each text embedded alone gives, and the cosine is numpy's."""

from __future__ import annotations

import numpy as np
import torch

from rlhf_lib.config import ModelConfig
from rlhf_lib.models.loading import load_encoder, load_tokenizer
from rlhf_lib.similarity import EmbeddingSimilarity


def test_similarity_is_the_cosine_of_unpadded_mean_embeddings(tiny_rm_dir):
    cfg = ModelConfig(name_or_path=tiny_rm_dir)
    encoder, tokenizer = load_encoder(cfg), load_tokenizer(cfg, padding_side="right")
    similarity = EmbeddingSimilarity(encoder, tokenizer, batch_size=3)
    texts = ["a great movie", "the plot was a terrible waste of time", "fine", "great acting and a good story"]
    others = ["a good film", "fine", "the plot was a terrible waste of time", "great acting and a good story"]

    def alone(text: str) -> np.ndarray:  # one text, no padding: the mean over all its tokens
        with torch.no_grad():
            return encoder(**tokenizer(text, return_tensors="pt")).last_hidden_state[0].mean(0).numpy()

    expected = [
        float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        for a, b in ((alone(t), alone(o)) for t, o in zip(texts, others, strict=True))
    ]
    got = similarity(texts, others)
    assert np.allclose(got, expected, atol=1e-5)
    assert abs(got[3] - 1.0) < 1e-5 and min(got[:3]) < 0.999
