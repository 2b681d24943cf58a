"""The typed configuration of an evaluation run (experiments live as files in configs/)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import Field, field_validator

from encoders.tuning import EncoderTuneConfig
from kg.train import KGConfig
from ranking.evaluation.tradeoff import DiversityConfig
from ranking.ltr.model import LTRConfig
from recdata.datasets import DatasetSource
from recdata.errors import UnknownNameError
from recdata.instructions import GENERATOR_VERSION, TASKS, InstructionConfig

BASELINES = ["popularity", "itemknn", "ease", "itemknn_lastn", "ease_lastn", "als_lastn",
             "transition", "filter_popularity", "embedding", "embedding_ease", "kg"]
RANKERS = ["ltr_full", "ltr_no_kg", "ltr_no_instruction", "ltr_no_text"]
TUNED = ["embedding_tuned", "ltr_tuned"]  # read the encoder instruction-tuned in the run
# fields that change what is scored, never what is trained
EVALUATION_ONLY = {"models", "tune", "sampled_negatives", "top_k", "requests_file", "data_dir",
                   "results_dir", "feature_repo", "diversity"}


class EvalConfig(DatasetSource):
    """Everything that determines a run's figures; its hash names the run's artifacts."""

    text_columns: list[str] = Field(default_factory=lambda: ["title"])
    models: list[str] = Field(default_factory=lambda: [*BASELINES, *RANKERS, *TUNED],
                              min_length=1)
    tasks: list[str] = Field(default_factory=lambda: list(TASKS), min_length=1)
    seed: int = 42
    tune: bool = Field(True, description="search each model's grid on validation; False "
                                         "scores each model's default configuration only "
                                         "(scale runs, where the grid is the cost)")
    sampled_negatives: int = Field(99, ge=1)
    top_k: int = Field(50, ge=20)
    sample_users: int | None = Field(None, ge=3, description="restrict the whole dataset to "
                                                          "this many random users")
    eval_users: int | None = Field(
        None, ge=1, description="score validation and test requests of this many random "
                                "users only; every model is still fitted on everyone's data "
                                "(what a scale run needs: fits at full size, a bounded "
                                "evaluation)")
    encoder_path: Path | None = None
    instructions: InstructionConfig = Field(default_factory=InstructionConfig)
    requests_file: Path | None = Field(
        None, description="logged requests (user_id, instruction, timestamp, target_item_id; "
                          "CSV or parquet) scored as task 'logged' beside the generated ones")
    train_requests_file: Path | None = Field(
        None, description="logged requests with the item each person chose (the columns of "
                          "`requests_file`) that the ranker learns from beside the generated "
                          "ones; their users' test requests leave every evaluated task, "
                          "since their targets are then training labels")
    ltr: LTRConfig = Field(default_factory=LTRConfig)
    kg: KGConfig = Field(default_factory=KGConfig)
    external_triples: Path | None = Field(
        None, description="your own KG (head, relation, tail) joined to the hold-out KG the "
                          "ranker's KG features read; with `entity_map`")
    entity_map: Path | None = Field(None, description="item_id,entity of the external KG")
    # bounded so that tuning takes minutes on 2 cores (see encoders/tuning.py)
    encoder_tuning: EncoderTuneConfig = Field(
        default_factory=lambda: EncoderTuneConfig(max_examples=3_000, max_seq_length=64))
    feature_repo: Path | None = Field(
        None, description="Feast repo the ranker reads (default: the package's feature_repo)")
    results_dir: Path = Path("bench/results")
    diversity: DiversityConfig | None = Field(
        default_factory=DiversityConfig,
        description="re-rank the ranker's test lists by MMR over a lambda grid (the "
                    "trade-off table and plot, and the model `<ranker>_mmr`); None: off")

    @field_validator("models")
    @classmethod
    def _known_models(cls, models: list[str]) -> list[str]:
        from ranking.scorers.base import scorer_class

        for m in models:
            scorer_class(m)
        return models

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: list[str]) -> list[str]:
        for t in tasks:
            if t not in TASKS:
                raise UnknownNameError("task", t, list(TASKS))
        return tasks

    def fingerprint(self, data_fingerprint: str) -> str:
        """Hash of what determines the figures: config, tuning grids and data (not where
        files go)."""
        from ranking.scorers.base import scorer_class

        payload = self.model_dump(mode="json", exclude={"data_dir", "results_dir",
                                                        "feature_repo"})
        payload["grids"] = {m: scorer_class(m).grid if self.tune else {} for m in self.models}
        payload.update(self._file_hashes("requests_file", "train_requests_file"))
        text = (json.dumps(payload, sort_keys=True, default=str) + data_fingerprint
                + f":generator-v{GENERATOR_VERSION}")
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    def training_fingerprint(self, data_fingerprint: str) -> str:
        """Hash of what determines the trained artifacts (`instructrank train`): the
        evaluation-only fields (which models are scored, their grids, the metrics' cut-offs,
        logged requests) are left out, so evaluating another model list or cut-off reads the
        same trained models."""
        payload = self.model_dump(mode="json", exclude=EVALUATION_ONLY)
        payload.update(self._file_hashes("train_requests_file"))
        text = (json.dumps(payload, sort_keys=True, default=str) + data_fingerprint
                + f":generator-v{GENERATOR_VERSION}")
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    def _file_hashes(self, *fields: str) -> dict[str, str]:
        """A file's content stands for it in a fingerprint: the same path with new requests
        is another run."""
        out = {}
        for name in fields:
            path = getattr(self, name)
            if path is not None and Path(path).exists():
                out[name] = hashlib.sha1(Path(path).read_bytes()).hexdigest()
        return out

    @classmethod
    def from_file(cls, path: Path) -> EvalConfig:
        return cls.model_validate(json.loads(Path(path).read_text()))
