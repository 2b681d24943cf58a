"""Baseline scorers; importing this package registers them by name."""

from ranking.scorers import history, instruction  # noqa: F401
