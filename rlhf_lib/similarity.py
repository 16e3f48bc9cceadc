"""Semantic similarity of two texts: cosine of mean-pooled sentence embeddings.

This is how sentence-transformers runs all-MiniLM-L6-v2 (mean over the non-padding tokens of the last hidden
state, then cosine); written here on transformers because that package is not a dependency, for a few lines.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


class EmbeddingSimilarity:
    """`similarity(texts, others) -> [cos(embed(text), embed(other))]`, in [-1, 1] (1: same meaning)."""

    def __init__(
        self, encoder: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int = 64, max_length: int = 128
    ) -> None:
        self.encoder, self.tokenizer = encoder.eval(), tokenizer
        self.batch_size, self.max_length = batch_size, max_length

    def __call__(self, texts: list[str], others: list[str]) -> list[float]:
        if len(texts) != len(others):
            raise ValueError(f"{len(texts)} texts against {len(others)} others: they are compared in pairs")
        cosines = torch.nn.functional.cosine_similarity(self.embed(texts), self.embed(others), dim=-1)
        return cosines.tolist()

    @torch.inference_mode()
    def embed(self, texts: list[str]) -> torch.Tensor:
        """One mean-pooled embedding per text (an empty text embeds its special tokens only)."""
        device = next(self.encoder.parameters()).device
        pooled = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(device)
            hidden = self.encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0))
        return torch.cat(pooled).float().cpu()
