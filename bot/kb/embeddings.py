"""Sentence embeddings for optional hybrid retrieval (``SOLARBOT_KB_EMBEDDINGS``, issue 14).

A local folder holding a sentence-embedding model in the transformers format (a BERT-like encoder
and its tokenizer, e.g. a copy of all-MiniLM-L6-v2) is loaded with ``AutoModel`` on the CPU, never
downloaded. A text's vector is the mean of its token states (padding left out), L2-normalised, so
that a dot product is the cosine similarity. Stored as float32 bytes with the chunks (migration
0016_kb_ranking); ``model_id`` (the folder's name and the vector size) tells vectors of different
models apart.

Embedding is CPU work: callers run it on a thread (ingestion's ``_store``, 📚 learning's
``bot.learning.learn``, the worker's ``_prepare_sync``), never on the event loop. Both writers of
documents get their vectors from ``chunk_vectors``. One lock makes the model safe to share between
threads.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bot.errors import ConfigError
from bot.knowledge import ChunkDraft
from storage.repository.knowledge import DocumentVectors

MAX_TOKENS = (
    256  # what a passage's vector reads of it (sentence encoders are trained on short text)
)
BATCH = 32


class Embedder:
    def __init__(self, folder: Path) -> None:
        """Load the model in ``folder`` (ConfigError, naming the setting, when that fails)."""
        try:
            import torch
            from transformers import AutoModel, AutoTokenizer

            self._tokenizer: Any = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            self._model: Any = AutoModel.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(
                f"SOLARBOT_KB_EMBEDDINGS: cannot load a sentence-embedding model from {folder} "
                f"({type(exc).__name__}: {str(exc)[:200]})"
            ) from None
        self._model.eval()
        self._torch = torch
        self._lock = threading.Lock()
        self.dimensions = int(self._model.config.hidden_size)
        self.model_id = f"{folder.name}/{self.dimensions}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One L2-normalised float32 row per text (``len(texts)`` × ``dimensions``)."""
        rows = []
        with self._lock, self._torch.inference_mode():
            for start in range(0, len(texts), BATCH):
                batch = self._tokenizer(
                    list(texts[start : start + BATCH]),
                    padding=True,
                    truncation=True,
                    max_length=MAX_TOKENS,
                    return_tensors="pt",
                )
                states = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
                pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
                rows.append(pooled.float().numpy())
        if not rows:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        matrix = np.concatenate(rows).astype(np.float32)
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        normalised: np.ndarray = matrix / np.maximum(norms, 1e-12)
        return normalised


def load_embedder(folder: Path | None) -> Embedder | None:
    """The model of ``SOLARBOT_KB_EMBEDDINGS`` (None: hybrid retrieval is off). Slow: on a thread."""
    return None if folder is None else Embedder(folder)


def passage_text(title: str, heading_path: Sequence[str], text: str) -> str:
    """What a passage's vector is computed from: its title and headings, then its text."""
    return " › ".join([title, *heading_path]) + "\n" + text


def chunk_vectors(
    embedder: Embedder | None, title: str, chunks: Sequence[ChunkDraft]
) -> DocumentVectors | None:
    """The vectors stored with a document's chunks, one per chunk in order (None: hybrid
    retrieval is off). What ``kb add``/``kb sync`` and 📚 learning write. Slow: on a thread."""
    if embedder is None:
        return None
    embedded = embedder.embed(
        [passage_text(title, chunk.heading_path, chunk.text) for chunk in chunks]
    )
    return DocumentVectors(model=embedder.model_id, vectors=embedded.tolist())
