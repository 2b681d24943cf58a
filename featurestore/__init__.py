"""Talking to Feast: open a store, check sources against views, apply, materialize,
read features back point-in-time and online (`store`), and build or refresh a repo
from a dataset (`build`). Below the ranker, above the raw data and the Feast declarations
(`feature_repo/`)."""

import feature_repo  # noqa: F401 - before any Feast import (see its docstring)
