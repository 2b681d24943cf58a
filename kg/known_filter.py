"""The known-triple filter of PyKEEN's rank-based evaluation, by sorted lookup.

A filtered evaluation ranks each held-out (h, r, t) against every entity, and first drops
the entities that would make another known triple: for the head side, every h' with
(h', r, t) among all known triples. PyKEEN 1.11 finds them by comparing each triple of the
batch with every known triple (`create_sparse_positive_filter_`: batch x triples booleans,
three times per batch and side), which was a fifth of a KG training on ML-100k (15.5 of
73 s: 512 x 161,603 comparisons per call, 452 calls for early stopping's evaluations) and
grows with the KG. Here the known triples are sorted once per evaluation by (relation,
other side's entity), and a batch's rows are found by binary search: the same pairs, in
the same order (by batch row, then by position among the known triples), so scores, ranks,
early stopping and the weights do not change (tests/test_kg.py compares both functions, and
a trained model's weights with and without this).

`sorted_lookup_filter()` installs it around one training (a context manager restoring
PyKEEN's own function after); where PyKEEN no longer has the function it replaces, it
changes nothing and PyKEEN filters as it always did.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_MODULE = "pykeen.evaluation.evaluator"
_NAME = "create_sparse_positive_filter_"


class _SortedTriples:
    """All known triples sorted by (relation, entity of `other` column): one per evaluation
    and side. Keeps the triples tensor itself, so a later tensor at the same address is
    never mistaken for it."""

    def __init__(self, triples: Any, filter_col: int) -> None:
        import torch

        self.triples = triples
        self.filter_col = filter_col
        self.width = int(triples[:, [0, 2]].max()) + 1 if len(triples) else 1
        keys = self._keys(triples)
        self.order = torch.argsort(keys, stable=True)
        self.sorted = keys[self.order]

    def _keys(self, triples: Any) -> Any:
        other = 2 - self.filter_col
        return triples[:, 1].long() * self.width + triples[:, other].long()

    def matches(self, batch: Any) -> Any:
        """(m x 2) (batch row, entity) of every known triple that agrees with a batch row on
        the relation and the other side, by batch row and then by position among the known
        triples: what PyKEEN's dense comparison and `nonzero` give."""
        import torch

        other = 2 - self.filter_col
        inside = batch[:, other] < self.width  # an entity no known triple has matches none
        keys = torch.where(inside, self._keys(batch), -1)
        lo = torch.searchsorted(self.sorted, keys, right=False)
        hi = torch.searchsorted(self.sorted, keys, right=True)
        counts = hi - lo
        rows = torch.repeat_interleave(torch.arange(len(batch)), counts)
        # each row's run of sorted positions lo..hi-1, laid end to end
        starts = torch.repeat_interleave(lo - (torch.cumsum(counts, 0) - counts), counts)
        positions = self.order[starts + torch.arange(int(counts.sum()))]
        entities = self.triples[positions, self.filter_col]
        return torch.stack([rows, entities.to(rows.dtype)], dim=1)


class _Filter:
    def __init__(self) -> None:
        self.kept: dict[int, _SortedTriples] = {}

    def __call__(self, hrt_batch: Any, all_pos_triples: Any, relation_filter: Any = None,
                 filter_col: int = 0) -> tuple[Any, Any]:
        if filter_col not in (0, 2):
            raise NotImplementedError(f"filter_col must be 0 or 2, got {filter_col}")
        kept = self.kept.get(filter_col)
        if kept is None or kept.triples is not all_pos_triples:
            kept = self.kept[filter_col] = _SortedTriples(all_pos_triples, filter_col)
        # PyKEEN hands the second return value back on the batch's other side; nothing
        # here needs it
        return kept.matches(hrt_batch), relation_filter


@contextmanager
def sorted_lookup_filter() -> Iterator[bool]:
    """Within the block, PyKEEN's filtered evaluation finds known triples by sorted lookup;
    yields whether it does (False: this PyKEEN has no such function to replace)."""
    import importlib

    module = importlib.import_module(_MODULE)
    original = getattr(module, _NAME, None)
    if original is None:
        yield False
        return
    setattr(module, _NAME, _Filter())
    try:
        yield True
    finally:
        setattr(module, _NAME, original)
