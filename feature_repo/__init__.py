"""The Feast repository. `definitions.py` holds declarations only (Feast imports it on
`feast apply`); `jobs/` holds the polars jobs that write the sources (ignored by Feast).

Importing this package (featurestore does, before anything imports Feast) turns off the
run-time type checks Feast asks of typeguard: its `@typechecked` decorator re-parses and
recompiles the source of each decorated function when Feast is imported, ~3 s of the ~6 s
every process that touches the store spent importing Feast (each CLI command, each server
worker, each test process). typeguard's documentation makes the decorator a no-op under
`python -O`, its production setting; this does the same without turning off `assert`
everywhere else. Feast is the only installed package that uses typeguard.
`INSTRUCTRANK_FEAST_TYPECHECKS=1` keeps the checks (debugging a Feast call).

It also stands a lazy `feast.torch_wrapper` in for Feast's, which imports PyTorch when Feast
is imported (~2 s) for the `to_tensor` conversions of its responses, which nothing here
calls: a server, `recommend` and `evaluate` run the encoder in ONNX Runtime and never need
PyTorch. Feast reaches that module only through its `get_torch()`, which imports it when
called, as Feast's does."""

import os


def _feast_without_typechecks() -> None:
    import sys

    if os.environ.get("INSTRUCTRANK_FEAST_TYPECHECKS") == "1" or "feast" in sys.modules:
        return
    try:
        import typeguard
    except ImportError:  # a Feast without typeguard has nothing to turn off
        return

    def typechecked(target: object = None, **_options: object) -> object:
        return target if target is not None else (lambda decorated: decorated)

    typeguard.typechecked = typechecked


def _feast_without_eager_torch() -> None:
    import sys
    import types

    if "feast" in sys.modules or "feast.torch_wrapper" in sys.modules:
        return
    lazy = types.ModuleType("feast.torch_wrapper", "PyTorch for Feast, imported when asked")

    def get_torch() -> object:
        import torch

        return torch

    lazy.get_torch = get_torch  # type: ignore[attr-defined]
    sys.modules["feast.torch_wrapper"] = lazy


_feast_without_typechecks()
_feast_without_eager_torch()
