"""Domain exceptions for the whole project, in one place.

The CLI turns any `InstructRankError` into one line and exit code 1; the service turns it
into a 4xx/5xx with `detail`. Messages name the parameter, the bad value and what is valid.
"""

from __future__ import annotations

from dataclasses import dataclass


class InstructRankError(Exception):
    """Base class: an error the user can act on, printed without a traceback."""


class ConfigError(InstructRankError):
    """A configuration value is out of range or inconsistent."""


class UnknownNameError(InstructRankError):
    """A pluggable part was asked for by a name that is not registered."""

    def __init__(self, kind: str, name: str, valid: list[str]) -> None:
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        super().__init__(f"unknown {kind} {name!r}; valid names: {', '.join(self.valid)}")


class DataFetchError(InstructRankError):
    """No source for a dataset could be reached or read."""


@dataclass(frozen=True)
class Problem:
    """One problem in an input file. `row` is the 1-based line in a CSV (header = line 1)
    or the 1-based row in a parquet file; None when the problem is about the whole file."""

    file: str
    row: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.row is not None:
            where += f":{self.row}"
        if self.column is not None:
            where += f" [{self.column}]"
        return f"{where}: {self.message}"


class DataValidationError(InstructRankError):
    """Input data has problems; every one is listed and nothing was loaded."""

    MAX_SHOWN = 50

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        shown = "\n".join(f"  {p}" for p in problems[: self.MAX_SHOWN])
        more = len(problems) - self.MAX_SHOWN
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"{len(problems)} problem(s) in the input data:\n{shown}{tail}")


class ArtifactMissingError(InstructRankError):
    """A stage needs an artifact an earlier stage has not made (the message names the
    command that makes it)."""


class FeatureStoreError(InstructRankError):
    """The feature store is misconfigured, or a source no longer matches its view."""


class StoreUnavailableError(InstructRankError):
    """The online store cannot be reached (the service answers 503)."""


class InvalidRequestError(InstructRankError):
    """A request the system will not score (empty or non-text instruction, bad k)."""


def transportable(exc: BaseException) -> BaseException:
    """The error a request raised, as one that survives pickling to another process (one
    whose constructor takes other arguments than its message would not): the kinds a
    caller acts on keep their kind and message, the rest become a RuntimeError naming
    theirs."""
    for kind in (InvalidRequestError, StoreUnavailableError, ConfigError):
        if isinstance(exc, kind):
            return kind(str(exc))
    return RuntimeError(f"{type(exc).__name__}: {exc}")
