"""In-memory vector index of one memory shard: string ids -> unit float32 vectors, top-k by cosine.

Owns: the shard's embedding matrix and id bookkeeping. Not thread-safe: the owning shard serialises calls.
Vectors must be L2-normalised (the embedder returns them so), which makes inner product equal cosine; NaN/inf,
wrong-dimension or non-unit vectors raise ValueError. The dimension always comes from the caller.

- ``ExactIndex``: a dense float32 matrix; a query is one matrix-vector product plus ``np.argpartition``.
- ``ApproxIndex``: an HNSW graph from hnswlib (chosen by ``benchmarks/index_choice.py``): evicted ids are
  marked deleted and their slots reused by later adds; re-adding a live id updates its vector in place.

    index = make_index("exact", dim=384)
    index.add(["m1", "m2"], vecs)            # (2, 384) float32, unit rows
    ids, sims = index.search(query, k=10)    # query (384,); sims sorted descending
    index.remove(["m1"])
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Literal

import numpy as np

from memory_server.records import UNIT_NORM_TOL  # the one tolerance for unit-length embeddings


def _check_vectors(vecs: np.ndarray, dim: int, n: int) -> np.ndarray:
    """``vecs`` as a C-contiguous float32 (n, dim) array of finite unit rows, or ValueError."""
    arr = np.ascontiguousarray(vecs, dtype=np.float32)
    if arr.ndim != 2 or arr.shape != (n, dim):
        raise ValueError(f"vectors have shape {tuple(np.shape(vecs))}, expected ({n}, {dim}): one row of dimension {dim} per id")
    _check_rows(arr)
    return arr


def _check_query(query: np.ndarray, dim: int) -> np.ndarray:
    q = np.ascontiguousarray(query, dtype=np.float32)
    if q.shape != (dim,):
        raise ValueError(f"query has shape {tuple(np.shape(query))}, expected ({dim},): the index holds vectors of dimension {dim}")
    _check_rows(q[None, :])
    return q


def _check_rows(arr: np.ndarray) -> None:
    if not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise ValueError(f"vector {bad} contains NaN or inf")
    norms = np.linalg.norm(arr, axis=1)
    off = np.abs(norms - 1.0) > UNIT_NORM_TOL
    if off.any():
        bad = int(np.flatnonzero(off)[0])
        raise ValueError(f"vector {bad} has L2 norm {norms[bad]:.4f}; vectors must be L2-normalised (norm 1)")


def _check_ids(ids: list[str]) -> list[str]:
    ids = list(ids)
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate ids in one add() call")
    return ids


class VectorIndex(ABC):
    """Top-k by cosine over unit vectors keyed by string id."""

    def __init__(self, dim: int) -> None:
        if int(dim) <= 0:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self.dim = int(dim)

    @abstractmethod
    def add(self, ids: list[str], vecs: np.ndarray) -> None:
        """Insert ``vecs`` (len(ids), dim) under ``ids``; an id already present gets the new vector."""

    @abstractmethod
    def remove(self, ids: list[str]) -> int:
        """Drop ``ids``; ids not present are ignored. Returns how many were removed."""

    @abstractmethod
    def search(self, query: np.ndarray, k: int, ef: int | None = None) -> tuple[list[str], np.ndarray]:
        """The min(k, len) most similar ids and their cosine similarities (float32), most similar first.

        ``ef``: the approximate index's query beam for this call (None = its default); the exact index ignores it.
        """

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __contains__(self, id_: object) -> bool: ...


class ExactIndex(VectorIndex):
    """Brute force over a dense (capacity, dim) float32 matrix whose first ``len`` rows are live.

    Growth doubles the capacity (amortised O(1) adds); removal moves the last row into the hole, so the live
    rows stay contiguous and a query reads exactly ``len * dim * 4`` bytes.
    """

    def __init__(self, dim: int, initial_capacity: int = 1024) -> None:
        super().__init__(dim)
        self._vecs = np.empty((max(1, int(initial_capacity)), self.dim), dtype=np.float32)
        self._row_ids: list[str] = []      # row -> id
        self._rows: dict[str, int] = {}    # id -> row

    def __len__(self) -> int:
        return len(self._row_ids)

    def __contains__(self, id_: object) -> bool:
        return id_ in self._rows

    def add(self, ids: list[str], vecs: np.ndarray) -> None:
        ids = _check_ids(ids)
        vecs = _check_vectors(vecs, self.dim, len(ids))
        new = [i for i, id_ in enumerate(ids) if id_ not in self._rows]
        for i, id_ in enumerate(ids):
            if id_ in self._rows:
                self._vecs[self._rows[id_]] = vecs[i]
        if not new:
            return
        n = len(self)
        self._reserve(n + len(new))
        self._vecs[n : n + len(new)] = vecs[new]
        for offset, i in enumerate(new):
            self._rows[ids[i]] = n + offset
            self._row_ids.append(ids[i])

    def _reserve(self, rows: int) -> None:
        if rows <= len(self._vecs):
            return
        grown = np.empty((max(rows, 2 * len(self._vecs)), self.dim), dtype=np.float32)
        grown[: len(self)] = self._vecs[: len(self)]
        self._vecs = grown

    def remove(self, ids: list[str]) -> int:
        removed = 0
        for id_ in ids:
            row = self._rows.pop(id_, None)
            if row is None:
                continue
            last = len(self) - 1
            if row != last:
                moved = self._row_ids[last]
                self._vecs[row] = self._vecs[last]
                self._row_ids[row] = moved
                self._rows[moved] = row
            self._row_ids.pop()
            removed += 1
        return removed

    def search(self, query: np.ndarray, k: int, ef: int | None = None) -> tuple[list[str], np.ndarray]:
        q = _check_query(query, self.dim)
        n, k = len(self), min(int(k), len(self))
        if k <= 0:
            return [], np.empty(0, dtype=np.float32)
        sims = self._vecs[:n] @ q                       # one sgemv over the live rows
        top = np.argpartition(sims, n - k)[n - k :] if k < n else np.arange(n)
        top = top[np.argsort(-sims[top], kind="stable")]
        return [self._row_ids[i] for i in top], sims[top]


class ApproxIndex(VectorIndex):
    """HNSW (hnswlib, inner-product space) with string ids mapped to integer labels.

    ``M`` and ``ef_construction`` shape the graph; ``ef_search`` is the query beam (raised to k when k is
    larger; a call may pass its own). Removed ids are marked deleted and their slots are reused by later adds, so
    an evicting shard does not grow; the graph grows by doubling when full. ``threads`` is used for batch adds
    (0 = every core this process may use); queries use one.
    """

    def __init__(self, dim: int, M: int = 16, ef_construction: int = 100, ef_search: int = 256,
                 initial_capacity: int = 1024, threads: int = 1) -> None:
        import hnswlib

        super().__init__(dim)
        self.ef_search = int(ef_search)
        self.threads = int(threads) or len(os.sched_getaffinity(0))
        self._index = hnswlib.Index(space="ip", dim=self.dim)
        self._index.init_index(max_elements=max(1, int(initial_capacity)), M=int(M),
                               ef_construction=int(ef_construction), allow_replace_deleted=True)
        self._labels: dict[str, int] = {}   # id -> label
        self._id_of: dict[int, str] = {}    # label -> id
        self._next_label = 0
        self._deleted = 0                   # slots marked deleted, reusable by adds

    def __len__(self) -> int:
        return len(self._labels)

    def __contains__(self, id_: object) -> bool:
        return id_ in self._labels

    def add(self, ids: list[str], vecs: np.ndarray) -> None:
        ids = _check_ids(ids)
        vecs = _check_vectors(vecs, self.dim, len(ids))
        old = [i for i, id_ in enumerate(ids) if id_ in self._labels]
        new = [i for i, id_ in enumerate(ids) if id_ not in self._labels]
        if old:  # hnswlib updates the vector of an existing label in place and re-links it
            self._index.add_items(vecs[old], [self._labels[ids[i]] for i in old], num_threads=self.threads)
        if not new:
            return
        needed = self._index.element_count + max(0, len(new) - self._deleted)
        if needed > self._index.max_elements:
            self._index.resize_index(max(needed, 2 * self._index.max_elements))
        labels = list(range(self._next_label, self._next_label + len(new)))
        self._next_label += len(new)
        self._index.add_items(vecs[new], labels, num_threads=self.threads, replace_deleted=self._deleted > 0)
        self._deleted = max(0, self._deleted - len(new))
        for i, label in zip(new, labels):
            self._labels[ids[i]] = label
            self._id_of[label] = ids[i]

    def remove(self, ids: list[str]) -> int:
        removed = 0
        for id_ in ids:
            label = self._labels.pop(id_, None)
            if label is None:
                continue
            del self._id_of[label]
            self._index.mark_deleted(label)
            removed += 1
        self._deleted += removed
        return removed

    def search(self, query: np.ndarray, k: int, ef: int | None = None) -> tuple[list[str], np.ndarray]:
        q = _check_query(query, self.dim)
        k = min(int(k), len(self))
        if k <= 0:
            return [], np.empty(0, dtype=np.float32)
        ef = max(self.ef_search if ef is None else int(ef), k)
        self._index.set_ef(ef)
        try:
            labels, dists = self._index.knn_query(q, k=k, num_threads=1)
        except RuntimeError:  # fewer than k reachable live nodes (many deletions): retry with a wide beam
            self._index.set_ef(max(4 * ef, len(self)))
            labels, dists = self._index.knn_query(q, k=k, num_threads=1)
        return [self._id_of[int(label)] for label in labels[0]], (1.0 - dists[0]).astype(np.float32)


def make_index(kind: Literal["exact", "approx"], dim: int, **params: int) -> VectorIndex:
    """The shard's index: ``exact`` (ExactIndex) or ``approx`` (ApproxIndex); ``params`` go to its constructor."""
    if kind == "exact":
        return ExactIndex(dim, **params)
    elif kind == "approx":
        return ApproxIndex(dim, **params)
    raise ValueError(f"index kind {kind!r}: expected 'exact' or 'approx'")
