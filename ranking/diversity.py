"""Maximal marginal relevance: the ranker's list re-ranked for variety, optionally.

After LightGBM has ordered the candidates (and before the optional LLM), the first `pool`
of them are placed one at a time. The first `head_share` of the `k` asked for keep the
ranker's order; each next one is the item with the best

    (1 - lambda) * relevance - lambda * (its mean cosine with the items placed above it)

lambda = 0 is the ranker's order exactly (the first best in the ranker's order wins every
tie); higher lambda trades relevance for items unlike those above them. Items past the
first `k` keep the ranker's order after them. Three choices make the trade cheap in
accuracy, each measured on ML-100k's validation requests (bench/results/diversity.csv):

- relevance is exp((score - best score) / temperature): the LambdaRank score on a scale
  where gaps mean confidence. Rescaled to [0, 1] per list (min-max), a list whose first
  item stands far above the rest and a list of near-equal candidates looked alike, and
  variety was bought from both at the same rate; here a confident list keeps its order and
  an unsure tail is reordered for variety almost for free.
- the penalty is the mean similarity to what is above, the quantity intra-list diversity
  averages, where classic MMR takes the highest (which only keeps near-duplicates apart).
- the head of the list stays (a share of k, so a short list is still varied): it holds
  most of NDCG@10 (ranks 1-5 ~89% on ML-100k's intent task), and the tail is where variety
  costs little.
Together they more than doubled the ILD@10 bought within 3% of NDCG@10 on ML-100k.

The similarities are those within a list's pool (200: the candidates one request ranks),
never the catalogue's, and only the rows of items placed are computed (LazySimilarities);
lists are processed in batches, one greedy step at a time for all of them (the evaluation
re-ranks every request for every setting of its grid).

A determinantal point process would be the other standard choice; MMR is kept because its
knobs have plain meanings, lambda = 0 is provably the identity, and its cost is the
similarity rows of the items it places.
"""

from __future__ import annotations

import numpy as np

POOL = 200  # candidates of the ranker's list that MMR may reorder
TEMPERATURE = 2.0  # of relevance, in LambdaRank score units (the evaluation tunes it)
HEAD_SHARE = 0.5  # of the k picks, the first that keep the ranker's order (tuned likewise)


def head_ranks(head_share: float, k: int) -> int:
    """The ranks kept in place of a list of `k`: floor(head_share * k)."""
    if not 0.0 <= head_share < 1.0:
        raise ValueError(f"the kept head must be a share in [0, 1), got {head_share}")
    return int(np.floor(head_share * k + 1e-9))


class LazySimilarities:
    """Each list's cosines between its items, a row (one item against the list) computed
    the first time a pick asks for it and kept: MMR reads only the rows of the items it
    places, ~10-40 of a pool's 200 over a whole grid of settings, so the full lists x n x n
    product (most of the trade-off's time) is never formed."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.unit = np.asarray(vectors, dtype=np.float32)
        rows, n, _ = self.unit.shape
        self.sims = np.empty((rows, n, n), dtype=np.float32)  # pages touched when written
        self.have = np.zeros((rows, n), dtype=bool)
        self.at = np.arange(rows)

    def rows(self, pick: np.ndarray) -> np.ndarray:
        """lists x n: each list's item `pick[list]` against all its items."""
        need = ~self.have[self.at, pick]
        if need.sum() > len(need) // 4:  # most lists: one batched product, no copies
            row = np.matmul(self.unit, self.unit[self.at, pick][:, :, None])[..., 0]
            r, p = self.at[need], pick[need]
            self.sims[r, p] = row[need]
        elif need.any():
            r, p = self.at[need], pick[need]
            self.sims[r, p] = np.matmul(self.unit[r], self.unit[r, p][:, :, None])[..., 0]
        self.have[self.at[need], pick[need]] = True
        return self.sims[self.at, pick]

    def block(self, top: np.ndarray) -> np.ndarray:
        """lists x m x m: the cosines among each list's items `top[list]`."""
        for j in range(top.shape[1]):
            self.rows(top[:, j])
        return self.sims[self.at[:, None, None], top[:, :, None], top[:, None, :]]


def relevance(scores: np.ndarray, temperature: float = TEMPERATURE) -> np.ndarray:
    """lists x n in (0, 1]: exp((score - the list's best) / temperature); 0 for pads."""
    if temperature <= 0:
        raise ValueError(f"relevance temperature must be positive, got {temperature}")
    scores = np.asarray(scores, dtype=np.float64)
    real = np.isfinite(scores)
    best = np.where(real, scores, -np.inf).max(axis=1, keepdims=True)
    return np.where(real, np.exp((np.where(real, scores, 0.0) - np.where(
        np.isfinite(best), best, 0.0)) / temperature), 0.0)


def mmr_batch(scores: np.ndarray, vectors: np.ndarray | None, lam: float, k: int,
              sims: np.ndarray | LazySimilarities | None = None, *,
              temperature: float = TEMPERATURE, head_share: float = HEAD_SHARE) -> np.ndarray:
    """(lists x n) positions in MMR order. `scores`: lists x n, each row in the ranker's
    order (best first; -inf pads a short list: pads stay last); `vectors`: lists x n x d,
    unit length (or their similarities, shared by several settings). The first
    `head_ranks(head_share, k)` of each row stay, the next up to `k` are chosen by MMR, the
    rest follow in the ranker's order."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"diversity lambda must be in [0, 1], got {lam}")
    head = head_ranks(head_share, k)
    rows, n = np.shape(scores)
    if lam == 0.0 or n <= 1 or head >= min(k, n):
        return np.broadcast_to(np.arange(n), (rows, n)).copy()
    real = np.isfinite(scores)
    rel = relevance(scores, temperature)
    if sims is None:
        assert vectors is not None
        sims = LazySimilarities(vectors)
    free = real.copy()
    total = np.zeros((rows, n))  # summed similarity to the items placed so far
    placed = np.zeros(rows)
    picked_at = np.full((rows, n), 2 * n)  # the step an item was placed at
    at = np.arange(rows)
    for step in range(min(k, n)):
        if step < head:
            pick = np.full(rows, step)
        else:
            mean = total / np.maximum(placed, 1.0)[:, None]
            pick = np.argmax(np.where(free, (1 - lam) * rel - lam * mean, -np.inf), axis=1)
        live = free[at, pick]  # False once a short list has run out
        picked_at[at[live], pick[live]] = step
        free[at, pick] = False
        row = sims.rows(pick) if isinstance(sims, LazySimilarities) else sims[at, pick]
        total += np.where(live[:, None], row, 0.0)
        placed += live
    # picks first, in the order picked; then the rest in the ranker's order; pads last
    rest = np.where(real, n, 3 * n) + np.arange(n)
    return np.argsort(np.where(picked_at < 2 * n, picked_at, rest), axis=1, kind="stable")


def mmr_order(scores: np.ndarray, vectors: np.ndarray, lam: float, k: int | None = None,
              *, temperature: float = TEMPERATURE, head_share: float = HEAD_SHARE
              ) -> np.ndarray:
    """`mmr_batch` of one list."""
    n = len(scores)
    return mmr_batch(np.asarray(scores)[None, :], np.asarray(vectors)[None, :, :], lam,
                     n if k is None else k, temperature=temperature,
                     head_share=head_share)[0]


def rerank(scores: np.ndarray, vectors: np.ndarray, lam: float, k: int,
           pool: int = POOL, *, temperature: float = TEMPERATURE,
           head_share: float = HEAD_SHARE) -> np.ndarray:
    """`mmr_order` over the first `pool` positions of a ranked list, the rest after them."""
    top = min(pool, len(scores))
    order = mmr_order(scores[:top], vectors[:top], lam, k, temperature=temperature,
                      head_share=head_share)
    return np.concatenate([order, np.arange(top, len(scores))])


def intra_list_diversity(vectors: np.ndarray) -> float:
    """1 - mean pairwise cosine of unit vectors (NaN for fewer than two): the ILD the
    evaluation reports (ranking.evaluation.beyond), for one list."""
    n = len(vectors)
    if n < 2:
        return float("nan")
    total = np.asarray(vectors, dtype=np.float64).sum(axis=0)
    # the sum of all pairwise cosines of unit vectors is (|sum|^2 - n) / 2
    mean_cos = (float(total @ total) - n) / (n * (n - 1))
    return 1.0 - mean_cos
