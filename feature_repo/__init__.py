"""The Feast repository. `definitions.py` holds declarations only (Feast imports it on
`feast apply`); `jobs/` holds the polars jobs that write the sources (ignored by Feast)."""
