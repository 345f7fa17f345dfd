"""A disk cache of teacher scores keyed by (LM identity, template, reward settings, texts).

Layout: ``<cache_root>/teacher_scores/<namespace>/`` holds ``namespace.json`` (what the namespace means, for
people) and ``chunk-*.pt`` files, each a ``{"keys": [item key, ...], "scores": float tensor}`` written
atomically (temp file + rename). Scoring appends a chunk every few hundred items, so a killed scoring run
keeps every finished chunk and a restart scores only what is missing. Chunks from several ranks or runs
simply add up; a key present twice keeps the first value read (identical inputs give identical scores).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from retrieval.cache import cache_key, cache_root, save_tensors_atomically, write_json_atomically


def item_key(prompt: str, output: str) -> str:
    """The cache key of one scored (prompt, desired output) pair; the prompt already holds key and query."""
    return cache_key([prompt, output])


class ScoreCache:
    """Teacher scores of one namespace (one LM, template and reward setting).

    Args:
        namespace: a dict describing everything that changes a score except the texts.
        root: the folder holding every namespace (default ``<cache_root>/teacher_scores``).
    """

    def __init__(self, namespace: dict[str, Any], root: str | Path | None = None):
        self.namespace = namespace
        self.directory = Path(root or cache_root() / "teacher_scores") / cache_key(namespace)[:16]
        self.directory.mkdir(parents=True, exist_ok=True)
        description = self.directory / "namespace.json"
        if not description.exists():
            write_json_atomically(description, namespace)
        self.scores: dict[str, float] = {}
        self._loaded_chunks: set[str] = set()
        self.refresh()

    def refresh(self) -> None:
        """Read chunks written since the last read (by this process, another rank or another run)."""
        for path in sorted(self.directory.glob("chunk-*.pt")):
            if path.name in self._loaded_chunks:
                continue
            try:
                chunk = torch.load(path, weights_only=True)
                keys, values = chunk["keys"], chunk["scores"].tolist()
            except Exception as error:  # noqa: BLE001 - a damaged chunk is reported and rescored, never trusted
                raise RuntimeError(
                    f"teacher-score cache chunk {path} is unreadable ({error}); delete it to rescore"
                ) from error
            if len(keys) != len(values):
                raise RuntimeError(
                    f"teacher-score cache chunk {path} has {len(keys)} keys but {len(values)} scores"
                )
            for key, value in zip(keys, values):
                self.scores.setdefault(key, float(value))
            self._loaded_chunks.add(path.name)

    def missing(self, keys: Iterable[str]) -> list[str]:
        """The keys without a cached score, first occurrence order, without duplicates."""
        seen: set[str] = set()
        out = []
        for key in keys:
            if key not in self.scores and key not in seen:
                seen.add(key)
                out.append(key)
        return out

    def get(self, keys: list[str]) -> torch.Tensor:
        """Scores of ``keys`` (all must be cached)."""
        missing = self.missing(keys)
        if missing:
            raise KeyError(f"{len(missing)} teacher scores are not cached in {self.directory}")
        return torch.tensor([self.scores[k] for k in keys], dtype=torch.float32)

    def add(self, scores: dict[str, float]) -> Path | None:
        """Store a chunk of new scores atomically; return its file (None when nothing was new)."""
        fresh = {k: float(v) for k, v in scores.items() if k not in self.scores}
        if not fresh:
            return None
        name = f"chunk-{os.getpid()}-{uuid.uuid4().hex[:12]}.pt"
        path = self.directory / name
        save_tensors_atomically(
            path, {"keys": list(fresh), "scores": torch.tensor(list(fresh.values()), dtype=torch.float64)}
        )
        self.scores.update(fresh)
        self._loaded_chunks.add(name)
        return path

    def __len__(self) -> int:
        return len(self.scores)
