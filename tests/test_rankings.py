import numpy as np
import scipy.sparse as sp

from ranking.evaluation.rankings import (
    full_ranking,
    sample_negatives,
    sampled_ranking,
    tie_permutation,
)


def test_ties_follow_the_seeded_permutation_not_item_id():
    tiebreak = np.array([3, 0, 2, 1])  # item 1 first, then 3, 2, 0
    scores = np.zeros((1, 4))
    top, _ = full_ranking(scores, sp.csr_matrix((1, 4)), np.array([0]), tiebreak, 4)
    assert top.tolist() == [[1, 3, 2, 0]]
    # a higher score always beats the tie order
    scores[0, 0] = 1.0
    top, _ = full_ranking(scores, sp.csr_matrix((1, 4)), np.array([0]), tiebreak, 4)
    assert top[0, 0] == 0


def test_tie_permutation_is_seeded():
    assert (tie_permutation(50, 1) == tie_permutation(50, 1)).all()
    assert not (tie_permutation(50, 1) == np.arange(50)).all()


def test_seen_items_are_excluded_but_never_the_target():
    scores = np.array([[5.0, 4.0, 3.0, 2.0]])
    seen = sp.csr_matrix(np.array([[1, 1, 0, 0]]))
    top, top_scores = full_ranking(scores, seen, np.array([1]), np.arange(4), 4)
    assert top.tolist() == [[1, 2, 3, -1]]  # item 0 removed, target 1 kept, padding -1
    assert np.isneginf(top_scores[0, 3])


def test_sampled_negatives_are_unseen_unique_and_not_the_target():
    rng = np.random.default_rng(0)
    seen = sp.random(30, 200, density=0.3, format="csr", random_state=1)
    targets = rng.integers(0, 200, 30)
    neg = sample_negatives(seen, targets, 99, seed=5)
    assert neg.shape == (30, 99)
    dense = seen.toarray() > 0
    for r in range(30):
        assert len(set(neg[r])) == 99
        assert not dense[r, neg[r]].any()
        assert targets[r] not in neg[r]
    assert (sample_negatives(seen, targets, 99, seed=5) == neg).all()


def test_sampled_ranking_orders_candidates():
    scores = np.array([[0.1, 0.9, 0.5, 0.0]])
    candidates = np.array([[0, 2, 1]])
    top, _ = sampled_ranking(scores, candidates, np.arange(4), 3)
    assert top.tolist() == [[1, 2, 0]]
