"""Beyond-accuracy metrics against values computed by hand on toy lists."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from ranking.evaluation.beyond import beyond_accuracy_of, item_table, popularity_table


def _rankings(lists: dict[tuple[str, int], list[int]]) -> pl.DataFrame:
    rows = [{"model": m, "task": "intent", "protocol": "full", "request_id": r, "rank": i + 1,
             "item_id": item, "score": 1.0 - i / 10}
            for (m, r), items in lists.items() for i, item in enumerate(items)]
    # the sampled protocol and ranks past ten must not count
    rows += [{"model": "a", "task": "intent", "protocol": "sampled", "request_id": 1,
              "rank": 1, "item_id": 4, "score": 1.0},
             {"model": "a", "task": "intent", "protocol": "full", "request_id": 1,
              "rank": 11, "item_id": 4, "score": 0.0}]
    return pl.DataFrame(rows)


def test_metrics_equal_hand_computed_values():
    # four items: 1 and 2 point the same way, 3 is orthogonal to both, 4 opposite to 1
    vectors = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    items = item_table(np.array([1, 2, 3, 4]), vectors,
                       [["comedy"], ["comedy", "drama"], ["horror"], None])
    counts = np.array([6.0, 3.0, 1.0, 0.0])  # training interactions of items 1..4
    popularity = popularity_table("intent", np.array([1, 2, 3, 4]), counts)
    rankings = _rankings({("a", 1): [1, 2, 3], ("a", 2): [3], ("b", 1): [1, 4]})
    got = {r["model"]: r for r in beyond_accuracy_of(rankings, items, popularity,
                                                      4).to_dicts()}

    # model a, list 1: pairs (1,2) cos 1, (1,3) 0, (2,3) 0 -> ILD 1 - 1/3; list 2 has no
    # pair and does not count for the diversities
    assert got["a"]["ild@10"] == pytest.approx(2 / 3)
    # Jaccard distances: {comedy} vs {comedy, drama} 1/2, vs {horror} 1, the other 1
    assert got["a"]["ild_attr@10"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert got["a"]["coverage@10"] == pytest.approx(3 / 4)
    p = (counts + 1) / (counts.sum() + 4)  # add-one smoothing: 7/14, 4/14, 2/14, 1/14
    info = -np.log2(p)
    assert got["a"]["novelty@10"] == pytest.approx(
        (np.mean(info[[0, 1, 2]]) + info[2]) / 2)
    # the top 10% of four items is one item (item 1): list 1 has it once in three
    assert got["a"]["popular_share@10"] == pytest.approx((1 / 3 + 0) / 2)

    # model b: items 1 and 4 are opposite (cosine -1): ILD 2; no attributes on 4
    assert got["b"]["ild@10"] == pytest.approx(2.0)
    assert got["b"]["ild_attr@10"] == pytest.approx(1.0)
    assert got["b"]["coverage@10"] == pytest.approx(2 / 4)
    assert got["b"]["novelty@10"] == pytest.approx((info[0] + info[3]) / 2)
    assert math.isclose(got["b"]["popular_share@10"], 0.5)


def test_items_without_attributes_are_at_distance_zero_from_each_other():
    items = item_table(np.array([1, 2]), np.eye(2), [None, []])
    popularity = popularity_table("intent", np.array([1, 2]), np.array([1.0, 1.0]))
    got = beyond_accuracy_of(_rankings({("a", 1): [1, 2]}).filter(pl.col("rank") <= 10)
                             .filter(pl.col("protocol") == "full"), items, popularity, 2)
    assert got["ild_attr@10"][0] == 0.0 and got["ild@10"][0] == pytest.approx(1.0)
    assert got["popular_share@10"][0] == 1.0  # tied at the cut: both count as popular


def test_shared_pairs_count_once_per_list_that_holds_them():
    """Distances are computed per distinct item pair and joined back: every list still
    averages its own pairs, in either order, however many lists share them."""
    from ranking.diversity import intra_list_diversity

    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(12, 5))
    items = item_table(np.arange(1, 13), vectors, [[f"g{i % 3}"] for i in range(12)])
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    lists = {}
    for m in ("a", "b"):  # b: a's lists reversed (each pair in the other order) or reshuffled
        for r in range(40):
            lists[(m, r)] = (rng.choice(12, size=int(rng.integers(2, 8)), replace=False) + 1
                             ).tolist() if m == "a" or r % 2 else lists[("a", r)][::-1]
    popularity = popularity_table("intent", np.arange(1, 13), np.ones(12))
    got = {r["model"]: r["ild@10"] for r in beyond_accuracy_of(
        _rankings(lists), items, popularity, 12).to_dicts()}
    for m in ("a", "b"):
        want = np.mean([intra_list_diversity(unit[np.asarray(v) - 1])
                        for (mm, _), v in lists.items() if mm == m])
        assert got[m] == pytest.approx(want, abs=1e-6)
