"""Thin shells over the stages: the `instructrank` command line (`cli`, `cli_llm`) and
the HTTP service (`http`). Nothing here computes; everything calls one stage entry."""
