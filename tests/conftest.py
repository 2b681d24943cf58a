from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def synthetic():
    from recdata.synthetic import make_synthetic

    return make_synthetic(n_users=120, n_items=150, interactions_per_user=25, seed=7)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The project's data directory, shared with `make run`, so the real data and the
    embedding cache are fetched once per machine."""
    return Path(os.environ.get("INSTRUCTRANK_DATA_DIR", REPO / "data"))


@pytest.fixture(scope="session")
def movielens(data_dir):
    from recdata.movielens import fetch_movielens_100k, load_movielens_100k

    path, _ = fetch_movielens_100k(data_dir)
    return load_movielens_100k(path)


@pytest.fixture(scope="session")
def encoder(data_dir):
    from encoders.text import TextEncoder

    return TextEncoder(cache_dir=data_dir / "cache", show_progress=False)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url():
    """A real redis-server on a free loopback port for this test session. Skips (saying why)
    where none is installed, except under CI, where the parity tests must run."""
    import shutil
    import subprocess
    import time

    binary = shutil.which("redis-server")
    if binary is None:
        reason = "redis-server is not installed (`make test` installs it with apt-get as root)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    port = _free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL)
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start")
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def make_repo(tmp_path, synthetic):
    """Build a feature repo (SQLite, or Redis with a URL) in a fresh folder."""
    import shutil

    from featurestore.build import FeatureBuildConfig, build_features
    from featurestore.store import PACKAGE_REPO, FeatureRepo
    from recdata.instructions import InstructionConfig

    def make(dataset=None, *, embeddings=False, online="sqlite", redis_url=None, repo=None,
             data_dir=None):
        repo = repo or tmp_path / "repo"
        repo.mkdir(exist_ok=True)
        for name in ("feature_store.yaml", "feature_store.redis.yaml"):
            shutil.copy(PACKAGE_REPO / name, repo / name)
        cfg = FeatureBuildConfig(dataset="synthetic", repo=repo, embeddings=embeddings,
                                 online=online, redis_url=redis_url,
                                 data_dir=data_dir or tmp_path / "data",
                                 instructions=InstructionConfig(train_requests_per_user=0))
        result = build_features(cfg, dataset=dataset or synthetic, progress=False)
        return FeatureRepo(repo), result

    return make


@pytest.fixture(scope="session")
def trained(tmp_path_factory, synthetic):
    """A feature repo built for the synthetic set and one evaluation run that trains the
    full ranker and its no-KG ablation (small KG and few trees: this is about behaviour)."""
    from encoders.tuning import EncoderTuneConfig
    from featurestore.build import FeatureBuildConfig, build_features
    from featurestore.store import PACKAGE_REPO
    from kg.train import KGConfig
    from ranking.evaluation.config import EvalConfig
    from ranking.evaluation.harness import evaluate
    from ranking.ltr.model import LTRConfig
    from ranking.train import train

    root = tmp_path_factory.mktemp("ranker")
    repo, data = root / "repo", root / "data"
    repo.mkdir()
    for name in ("feature_store.yaml", "feature_store.redis.yaml"):
        shutil.copy(PACKAGE_REPO / name, repo / name)
    build_features(FeatureBuildConfig(dataset="synthetic", repo=repo, data_dir=data),
                   dataset=synthetic, progress=False)
    cfg = EvalConfig(dataset="synthetic", models=["popularity", "filter_popularity",
                                                  "ltr_full", "ltr_no_kg"],
                     feature_repo=repo, data_dir=data, results_dir=root / "results",
                     kg=KGConfig(epochs=10, eval_every=5, dim=16),
                     ltr=LTRConfig(n_estimators=60, early_stopping_rounds=20),
                     # used by the runs that tune the encoder (cached by its inputs)
                     encoder_tuning=EncoderTuneConfig(max_examples=400, batch_size=16,
                                                      max_seq_length=32))
    trained_run = train(cfg, dataset=synthetic, progress=False)
    made = _artifact_files(data)
    result = evaluate(cfg, dataset=synthetic, progress=False)
    return {"repo": repo, "data": data, "result": result, "cfg": cfg, "train": trained_run,
            "artifacts_after_train": made, "artifacts_after_evaluate": _artifact_files(data)}


TRAINED_ARTIFACTS = ("kg", "models", "serving", "encoders", "repos", "trained")


def _artifact_files(data):
    """Every file `train()` may write, with its size and modification time."""
    return {str(p.relative_to(data)): (p.stat().st_size, p.stat().st_mtime_ns)
            for sub in TRAINED_ARTIFACTS for p in (data / sub).rglob("*") if p.is_file()}


@pytest.fixture(scope="session")
def recommender(trained):
    from ranking.recommend import Recommender, RecommenderConfig

    return Recommender.load(RecommenderConfig(repo=trained["repo"], data_dir=trained["data"]))
