"""Scorers; importing this package registers them by name."""

from ranking.scorers import factors, history, instruction, knowledge, ltr  # noqa: F401
