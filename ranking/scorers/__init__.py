"""Scorers; importing this package registers them by name."""

from ranking.scorers import history, instruction, knowledge, ltr  # noqa: F401
