"""LRU cache of prompt embeddings keyed by prompt text; the empty prompt is pinned (never evicted)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

DEFAULT_CAPACITY = 32


@dataclass(frozen=True)
class PromptEmbedding:
    """Per-token context and pooled vector of one prompt, kept on the CPU."""

    tokens: torch.Tensor  # [1, context tokens, joint attention dim]
    pooled: torch.Tensor  # [1, pooled projection dim]


class PromptEmbeddingCache:
    """Least-recently-used cache; ``""`` (the usual negative prompt) is kept outside the LRU."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[str, PromptEmbedding] = OrderedDict()
        self._empty: PromptEmbedding | None = None
        self.hits = 0
        self.misses = 0

    def get(self, text: str) -> PromptEmbedding | None:
        found = self._empty if text == "" else self._entries.get(text)
        if found is None:
            self.misses += 1
            return None
        if text != "":
            self._entries.move_to_end(text)
        self.hits += 1
        return found

    def put(self, text: str, embedding: PromptEmbedding) -> None:
        if text == "":
            self._empty = embedding
            return
        if self.capacity == 0:
            return
        self._entries[text] = embedding
        self._entries.move_to_end(text)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries) + (self._empty is not None)

    def __contains__(self, text: str) -> bool:
        return (self._empty is not None) if text == "" else text in self._entries

    def clear(self) -> None:
        self._entries.clear()
        self._empty = None
