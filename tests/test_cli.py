from typer.testing import CliRunner

from serve.cli import app

runner = CliRunner()


def test_help_explains_commands():
    out = runner.invoke(app, ["--help"])
    assert out.exit_code == 0
    for command in ("evaluate", "data", "models"):
        assert command in out.output
    out = runner.invoke(app, ["evaluate", "--help"])
    assert "quality.csv" in out.output and "--models" in out.output


def test_unknown_model_is_one_line_and_exit_1():
    out = runner.invoke(app, ["evaluate", "--models", "popularity,nope"])
    assert out.exit_code == 1
    assert "unknown model 'nope'" in out.output
    assert "Traceback" not in out.output


def test_validate_lists_problems_with_rows(tmp_path):
    (tmp_path / "i.csv").write_text("user_id,item_id,timestamp\n1,1,10\n1,7,11\n")
    (tmp_path / "items.csv").write_text("item_id,title\n1,A\n")
    out = runner.invoke(app, ["data", "validate", "--interactions", str(tmp_path / "i.csv"),
                              "--items", str(tmp_path / "items.csv")])
    assert out.exit_code == 1
    assert "i.csv:3 [item_id]: item_id 7 is not in the items file" in out.output.replace("\n", "")


def test_evaluate_synthetic_writes_table(tmp_path):
    out = runner.invoke(app, ["evaluate", "--dataset", "synthetic", "--models",
                              "popularity,ease_lastn", "--tasks", "history", "--quiet",
                              "--data-dir", str(tmp_path), "--results-dir", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "quality.csv").exists() and (tmp_path / "quality.png").exists()
    assert "ease_lastn" in out.output


def test_models_lists_registry():
    out = runner.invoke(app, ["models"])
    assert out.exit_code == 0 and "embedding_ease" in out.output


def test_train_then_evaluate_reads_what_train_made(tmp_path):
    """`evaluate` of a model that reads a trained artifact (the hold-out KG) refuses to run
    before `train` with the same options, naming the command; after it, it reads it."""
    import json

    config = tmp_path / "run.json"
    config.write_text(json.dumps({"kg": {"epochs": 4, "eval_every": 2, "dim": 16}}))
    common = ["--dataset", "synthetic", "--models", "kg", "--tasks", "history", "--quiet",
              "--config", str(config), "--data-dir", str(tmp_path)]
    out = runner.invoke(app, ["evaluate", *common, "--results-dir", str(tmp_path)])
    assert out.exit_code == 1 and "instructrank train" in out.output
    assert "Traceback" not in out.output
    # --kg-only (make run starts it beside `features build`): the hold-out KG alone, where
    # train looks for it; train then trains it no more
    out = runner.invoke(app, ["train", *common, "--kg-only"])
    assert out.exit_code == 0, out.output
    (kg,) = (tmp_path / "kg").iterdir()
    assert f"hold-out KG: {kg}" in " ".join(out.output.split())
    assert not (tmp_path / "trained").exists()  # no manifest: the rankers are not trained
    made = (kg / "result.json").stat().st_mtime_ns
    out = runner.invoke(app, ["train", *common])
    assert out.exit_code == 0, out.output
    assert "hold-out KG" in out.output and "manifest" in out.output
    assert list((tmp_path / "kg").iterdir()) == [kg]
    assert (kg / "result.json").stat().st_mtime_ns == made
    assert json.loads(next((tmp_path / "trained").iterdir()).read_text())["kg"] == kg.name
    out = runner.invoke(app, ["evaluate", *common, "--results-dir", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "quality.csv").exists()
