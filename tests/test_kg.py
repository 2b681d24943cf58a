"""Knowledge graph: construction without leaks, PyKEEN training, numpy scores, serving."""

import warnings

import numpy as np
import polars as pl
import pytest

from feature_repo.ranker import service_name
from kg.embeddings import KGEmbeddings
from kg.external import load_external
from kg.signals import kg_signals
from kg.train import KGConfig, train_kg
from kg.triples import build_triples
from recdata.errors import ConfigError, DataValidationError, UnknownNameError
from recdata.split import temporal_leave_one_out


def planted_kg(seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """200 items in 10 categories; items link to 3 others of their category. The category
    edges of 40 items are held out: only the similarity structure can recover them."""
    rng = np.random.default_rng(seed)
    category = rng.integers(0, 10, 200)
    rows = []
    for i in range(200):
        peers = np.flatnonzero(category == category[i])
        for j in rng.choice(peers[peers != i], 3, replace=False):
            rows.append((f"item:{i}", "similar_to", f"item:{j}"))
    cat = [(f"item:{i}", "in_category", f"cat:{category[i]}") for i in range(200)]
    held = set(rng.choice(200, 40, replace=False).tolist())
    train = rows + [t for i, t in enumerate(cat) if i not in held]
    test = [t for i, t in enumerate(cat) if i in held]
    schema = ["head", "relation", "tail"]
    return (pl.DataFrame(train, schema=schema, orient="row"),
            pl.DataFrame(test, schema=schema, orient="row"))


def test_planted_relation_is_learned_far_above_random(tmp_path):
    train, test = planted_kg()
    cfg = KGConfig(dim=32, epochs=150, lr=0.02, batch_size=256, eval_every=50,
                   validation_share=0.02, test_share=0.02)
    emb = train_kg(train, cfg, tmp_path / "kg", progress=False).embeddings
    heads = emb.rows(test["head"].to_numpy())
    tails = emb.rows(test["tail"].to_numpy())
    scores = emb.score(heads[:, None], "in_category", np.arange(len(emb.entities))[None, :])
    true = scores[np.arange(len(test)), tails]
    ranks = 1 + (scores > true[:, None]).sum(axis=1)
    mrr, hits10 = float(np.mean(1 / ranks)), float(np.mean(ranks <= 10))
    n = len(emb.entities)
    random_mrr = float(np.mean(1 / np.arange(1, n + 1)))
    assert mrr > 5 * random_mrr, (mrr, random_mrr)
    assert hits10 > 0.5 and hits10 > 5 * 10 / n, hits10


@pytest.mark.parametrize("model", ["transe", "distmult", "complex", "rotate"])
def test_numpy_scores_equal_pykeen(model, tmp_path, monkeypatch):
    import torch
    from pykeen.pipeline import pipeline
    from pykeen.triples import TriplesFactory

    from kg.train import PYKEEN_MODELS, _export

    monkeypatch.setenv("PYSTOW_HOME", str(tmp_path))
    train, _ = planted_kg(1)
    factory = TriplesFactory.from_labeled_triples(train.to_numpy().astype(str))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = pipeline(training=factory, testing=factory, model=PYKEEN_MODELS[model],
                          model_kwargs={"embedding_dim": 8},
                          training_kwargs={"num_epochs": 3, "use_tqdm": False},
                          evaluation_kwargs={"use_tqdm": False}, random_seed=1, device="cpu")
    emb = _export(result.model, factory, model)
    hrt = factory.mapped_triples[:50]
    with torch.no_grad():
        expected = result.model.score_hrt(hrt).squeeze(-1).numpy()
    rel = factory.relation_id_to_label[int(hrt[0, 1])]
    same = (hrt[:, 1] == hrt[0, 1]).numpy()
    got = emb.score(hrt[:, 0].numpy(), rel, hrt[:, 2].numpy())
    assert np.allclose(got[same], expected[same], rtol=1e-4, atol=1e-4)


def test_collaborative_edges_come_from_the_training_window_only(synthetic):
    triples = build_triples(synthetic)
    split = temporal_leave_one_out(synthetic.interactions)
    held = split.filter(pl.col("split") != "train").select(
        pl.format("user:{}", "user_id").alias("head"), pl.format("item:{}", "item_id").alias(
            "tail"))
    collab = triples.filter(pl.col("relation").is_in(["interacted", "liked"]))
    assert collab.join(held, on=["head", "tail"], how="semi").height == 0
    # every user's edges end strictly before their validation position
    first_held = split.filter(pl.col("split") == "val").select("user_id", pl.col("seq").alias(
        "cut"))
    seq_of = split.select(pl.format("user:{}", "user_id").alias("head"),
                          pl.format("item:{}", "item_id").alias("tail"), "user_id", "seq")
    edges = collab.join(seq_of, on=["head", "tail"]).join(first_held, on="user_id")
    assert edges.height == collab.filter(pl.col("relation") == "interacted").height + \
        collab.filter(pl.col("relation") == "liked").height
    assert (edges["seq"] < edges["cut"]).all()
    assert triples.filter(pl.col("relation") == "has_genre").height > 0


def test_external_kg_maps_items_and_counts_the_unmapped(tmp_path, synthetic):
    (tmp_path / "t.tsv").write_text("head\trelation\ttail\nQ1\tdirected_by\tQ9\n"
                                    "Q2\tdirected_by\tQ9\nQ9\tborn_in\tQ77\n")
    (tmp_path / "m.csv").write_text("item_id,entity\n1,Q1\n2,Q2\n")
    ext = load_external(tmp_path / "t.tsv", tmp_path / "m.csv", synthetic.items["item_id"])
    assert ext.mapped_items == 2 and ext.unmapped_items == synthetic.n_items - 2
    assert ("item:1", "ext:directed_by", "ext:Q9") in ext.triples.rows()
    graph = build_triples(synthetic, ext.triples)
    assert graph.filter(pl.col("relation") == "ext:born_in").height == 1


def test_external_kg_bad_rows_are_all_reported(tmp_path, synthetic):
    (tmp_path / "t.tsv").write_text("head\trelation\ttail\nQ1\tdirected_by\t\n"
                                    "\tdirected_by\tQ9\n")
    (tmp_path / "m.csv").write_text("item_id,entity\nx,Q1\n2,Q2\n2,Q3\n99999,Q4\n")
    with pytest.raises(DataValidationError) as info:
        load_external(tmp_path / "t.tsv", tmp_path / "m.csv", synthetic.items["item_id"])
    found = {(p.file.rsplit("/", 1)[-1], p.row, p.column, p.message)
             for p in info.value.problems}
    assert ("t.tsv", 2, "tail", "empty tail") in found
    assert ("t.tsv", 3, "head", "empty head") in found
    assert ("m.csv", 2, "item_id", "item_id x is not in the catalogue") in found
    assert ("m.csv", 4, "item_id", "item_id 2 is mapped more than once") in found
    assert ("m.csv", 5, "item_id", "item_id 99999 is not in the catalogue") in found
    (tmp_path / "bad.tsv").write_text("h\tr\tt\na\tb\tc\n")
    with pytest.raises(DataValidationError, match="missing required column 'head'"):
        load_external(tmp_path / "bad.tsv", tmp_path / "m.csv", synthetic.items["item_id"])


def test_unknown_model_lists_valid_names(tmp_path):
    with pytest.raises(UnknownNameError, match="complex, distmult, rotate, transe"):
        train_kg(planted_kg()[0], KGConfig(model="transh"), tmp_path)


def test_nothing_changed_trains_nothing(tmp_path):
    train, _ = planted_kg()
    cfg = KGConfig(dim=8, epochs=2, eval_every=1, batch_size=512)
    first = train_kg(train, cfg, tmp_path / "kg", progress=False)
    second = train_kg(train, cfg, tmp_path / "kg", progress=False)
    assert not first.cached and second.cached
    assert np.array_equal(first.embeddings.entity_vectors, second.embeddings.entity_vectors)
    other = train_kg(train, cfg.model_copy(update={"dim": 6}), tmp_path / "kg", progress=False)
    assert not other.cached and other.key != first.key


def test_kg_threads_are_read_from_the_environment_and_given_back(tmp_path, monkeypatch):
    """INSTRUCTRANK_KG_THREADS sets PyTorch's threads for the training only (make run
    trains two KGs side by side on one each); a value that is not a count is refused by name
    before anything trains, and the weights do not depend on it."""
    import torch

    from kg.train import THREADS_ENV, training_threads

    train, _ = planted_kg()
    cfg = KGConfig(dim=8, epochs=2, eval_every=1, batch_size=512)
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert training_threads() is None
    default = train_kg(train, cfg, tmp_path / "a", progress=False)
    before = torch.get_num_threads()
    monkeypatch.setenv(THREADS_ENV, "1")
    one = train_kg(train, cfg, tmp_path / "b", progress=False)
    assert torch.get_num_threads() == before
    assert np.array_equal(one.embeddings.entity_vectors, default.embeddings.entity_vectors)
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(THREADS_ENV, bad)
        with pytest.raises(ConfigError, match=THREADS_ENV):
            train_kg(train, cfg, tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_sorted_lookup_filter_equals_pykeens_dense_one():
    """The known-triple filter by sorted lookup gives PyKEEN's pairs in PyKEEN's order, on
    both sides, with repeated known triples and batch entities no known triple has."""
    import torch
    from pykeen.evaluation.evaluator import create_sparse_positive_filter_

    from kg.known_filter import _Filter

    g = torch.Generator().manual_seed(0)

    def triples(n, n_e, n_r):
        return torch.stack([torch.randint(0, n_e, (n,), generator=g),
                            torch.randint(0, n_r, (n,), generator=g),
                            torch.randint(0, n_e, (n,), generator=g)], dim=1)

    for trial in range(40):
        n_e = int(torch.randint(2, 60, (1,), generator=g))
        n_r = int(torch.randint(1, 5, (1,), generator=g))
        known, batch = triples(300, n_e, n_r), triples(40, n_e + 3, n_r)
        ours = _Filter()
        for col in (0, 2):
            want, _ = create_sparse_positive_filter_(batch, known, None, col)
            got, _ = ours(batch, known, None, col)
            assert got.dtype == want.dtype and torch.equal(got, want), (trial, col)
    empty = torch.zeros((0, 3), dtype=torch.long)
    assert _Filter()(triples(5, 4, 2), empty, None, 0)[0].shape == (0, 2)


def test_training_with_the_sorted_filter_is_bit_identical(tmp_path, monkeypatch):
    """Early stopping's filtered evaluations rank the same with either filter, so the
    epochs, the metrics and every weight are the same; PyKEEN's function is back after."""
    from contextlib import contextmanager

    import pykeen.evaluation.evaluator as evaluator

    import kg.train

    original = evaluator.create_sparse_positive_filter_
    train, _ = planted_kg()
    cfg = KGConfig(dim=8, epochs=6, eval_every=1, batch_size=256, patience=1)
    fast = train_kg(train, cfg, tmp_path / "a", progress=False)
    assert evaluator.create_sparse_positive_filter_ is original

    @contextmanager
    def pykeens_own():
        yield False

    monkeypatch.setattr(kg.train, "sorted_lookup_filter", pykeens_own)
    dense = train_kg(train, cfg, tmp_path / "b", progress=False)
    assert (fast.epochs, fast.mrr, fast.hits_at_10) == (dense.epochs, dense.mrr,
                                                         dense.hits_at_10)
    assert np.array_equal(fast.embeddings.entity_vectors, dense.embeddings.entity_vectors)
    assert np.array_equal(fast.embeddings.relation_vectors, dense.embeddings.relation_vectors)


def test_signals_match_scores_and_mark_unknowns():
    rng = np.random.default_rng(0)
    ents = np.array(["user:1", "user:2", "item:10", "item:11", "item:12"])
    emb = KGEmbeddings("transe", ents, rng.normal(size=(5, 4)).astype(np.float32),
                       np.array(["interacted"]), rng.normal(size=(1, 4)).astype(np.float32))
    out = kg_signals(emb, np.array([1, 3]), np.array([[10, 11, 99], [10, 11, 12]]),
                     np.array([[12, -1], [-1, -1]]))
    assert out["kg_score"].shape == (2, 3)
    assert out["kg_score"][0, 0] == pytest.approx(emb.score(np.array([0]), "interacted",
                                                            np.array([2]))[0])
    assert np.isnan(out["kg_score"][0, 2]) and np.isnan(out["kg_score"][1]).all()  # unknowns
    assert np.isnan(out["kg_recent_cosine"][1]).all()  # no recent items
    v = emb.real_vectors()
    cos = v[2] @ v[4] / np.linalg.norm(v[2]) / np.linalg.norm(v[4])
    assert out["kg_recent_cosine"][0, 0] == pytest.approx(cos, rel=1e-5)


@pytest.mark.slow
def test_kg_train_on_movielens_is_served_by_feast(make_repo, movielens, tmp_path):
    from typer.testing import CliRunner

    from featurestore import store as fs
    from serve.cli import app

    repo, _ = make_repo(movielens)
    out = CliRunner().invoke(app, ["kg", "train", "--epochs", "3", "--dim", "16",
                                   "--repo", str(repo.path), "--data-dir", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert "interacted" in out.output and "MRR" in out.output
    store = repo.store()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = store.get_online_features(
            features=["user_kg_embedding:embedding", "item_kg_embedding:embedding"],
            entity_rows=[{"user_id": 42, "item_id": 50}], full_feature_names=True).to_dict()
    assert len(got["user_kg_embedding__embedding"][0]) == 16
    assert len(got["item_kg_embedding__embedding"][0]) == 16
    reader = fs.OnlineReader(store, service_name("no_text"))
    assert reader.read(42, [50]).user_known


def test_signals_of_a_graph_without_collaborative_edges_are_unknown():
    """Users with 5 interactions lose all of them to the split and the ranker's hold-out, so
    the ranker's KG has attribute triples only: its scores are unknown, not an error, and
    the item-space cosine still works."""
    rng = np.random.default_rng(0)
    ents = np.array(["item:10", "item:11", "genre:comedy"])
    emb = KGEmbeddings("transe", ents, rng.normal(size=(3, 4)).astype(np.float32),
                       np.array(["has_genre"]), rng.normal(size=(1, 4)).astype(np.float32))
    out = kg_signals(emb, np.array([1]), np.array([[10, 11]]), np.array([[11, -1]]))
    assert np.isnan(out["kg_score"]).all()
    assert out["kg_recent_cosine"][0, 1] == pytest.approx(1.0, rel=1e-5)
