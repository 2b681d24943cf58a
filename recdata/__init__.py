"""Raw data for instructrank: loaders, validation, synthetic data, the temporal split and
the instruction-request generator. Everything here is in-memory polars; only `movielens`
and `byo` read files."""
