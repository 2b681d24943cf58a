"""Candidate scoring, evaluation, serving and the command line."""
