"""Offline evaluation: rankings from scores, metrics in DuckDB SQL, the harness, reports."""
