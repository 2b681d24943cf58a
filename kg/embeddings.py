"""Trained KG embeddings as plain arrays, and the models' score functions in numpy.

Exported through each representation's forward pass, so PyKEEN's normalisers (unit-norm
entities for TransE/DistMult, unit-modulus relations for RotatE) are already applied; the
numpy scores then equal `model.score_hrt` (tests check it), and request-time KG signals need
neither torch nor the model. Stored as npz: no pickle.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recdata.atomic_io import atomic_path
from recdata.errors import UnknownNameError


def _transe(h: np.ndarray, r: np.ndarray, t: np.ndarray) -> np.ndarray:
    return -np.abs(h + r - t).sum(axis=-1)  # PyKEEN's default L1 norm


def _distmult(h: np.ndarray, r: np.ndarray, t: np.ndarray) -> np.ndarray:
    return (h * r * t).sum(axis=-1)


def _complex(h: np.ndarray, r: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.real((h * r * np.conj(t)).sum(axis=-1))


def _rotate(h: np.ndarray, r: np.ndarray, t: np.ndarray) -> np.ndarray:
    return -np.sqrt((np.abs(h * r - t) ** 2).sum(axis=-1))


SCORES: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
    "transe": _transe, "distmult": _distmult, "complex": _complex, "rotate": _rotate,
}


@dataclass(frozen=True)
class KGEmbeddings:
    model: str
    entities: np.ndarray          # labels, row i = entity i
    entity_vectors: np.ndarray    # float32, or complex64 for ComplEx/RotatE
    relations: np.ndarray
    relation_vectors: np.ndarray

    def __post_init__(self) -> None:
        if self.model not in SCORES:
            raise UnknownNameError("KG model", self.model, list(SCORES))

    def rows(self, labels: np.ndarray | list[str]) -> np.ndarray:
        """Row of each entity label, -1 where the graph does not have it."""
        if "_sorted" not in self.__dict__:  # computed once: the online path calls this a lot
            order = np.argsort(self.entities)
            self.__dict__["_sorted"] = (order, self.entities[order])
        order, ordered = self.__dict__["_sorted"]
        labels = np.asarray(labels, dtype=self.entities.dtype)
        pos = np.clip(np.searchsorted(ordered, labels), 0, len(order) - 1)
        return np.where(ordered[pos] == labels, order[pos], -1)

    def unit_vectors(self) -> np.ndarray:
        """`real_vectors()` scaled to unit length, computed once."""
        if "_unit" not in self.__dict__:
            v = self.real_vectors()
            self.__dict__["_unit"] = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True),
                                                    1e-12)
        return self.__dict__["_unit"]

    def relation(self, label: str) -> np.ndarray:
        hit = np.flatnonzero(self.relations == label)
        if hit.size == 0:
            raise UnknownNameError("KG relation", label, self.relations.tolist())
        return self.relation_vectors[hit[0]]

    def score(self, heads: np.ndarray, relation: str, tails: np.ndarray) -> np.ndarray:
        """Scores of (head row, relation, tail row), broadcasting; NaN where a row is -1."""
        h = self.entity_vectors[np.maximum(heads, 0)]
        t = self.entity_vectors[np.maximum(tails, 0)]
        out = SCORES[self.model](h, self.relation(relation), t).astype(np.float64)
        return np.where((heads < 0) | (tails < 0), np.nan, out)

    def real_vectors(self) -> np.ndarray:
        """Entity vectors as real float32 (real and imaginary parts side by side)."""
        v = self.entity_vectors
        if np.iscomplexobj(v):
            v = np.concatenate([v.real, v.imag], axis=-1)
        return v.astype(np.float32)

    def save(self, path: Path) -> None:
        tmp, path = atomic_path(path)
        with open(tmp, "wb") as f:  # a file object: np.savez would append '.npz' to a name
            np.savez(f, model=np.array(self.model), entities=self.entities.astype(str),
                     entity_vectors=self.entity_vectors, relations=self.relations.astype(str),
                     relation_vectors=self.relation_vectors)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> KGEmbeddings:
        with np.load(path) as z:
            return cls(str(z["model"]), z["entities"], z["entity_vectors"], z["relations"],
                       z["relation_vectors"])
