# make demo : set up .venv, then run the main job on the built-in synthetic hospitals
# make test : set up .venv, then run every test
# make server BACKEND=postgresql+psycopg2://user@dbhost/mlflow ARTIFACTS=/shared/mlartifacts [HOST=0.0.0.0]
#             : the shared tracking server for a cluster (README "Running on a cluster")
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# The CUDA build of torch that also runs on the CPU (installed from local files on our machines).
TORCH   ?= torch==2.14.1 torchvision==0.29.1
export PATH := $(abspath $(VENV))/bin:$(PATH)
export MLFLOW_TRACKING_URI ?= sqlite:///$(abspath mlflow.db)

# make server: PostgreSQL backend store, artifacts proxied to a shared directory; loopback unless HOST is given
BACKEND ?=
ARTIFACTS ?= $(abspath mlartifacts)
HOST ?= 127.0.0.1
PORT ?= 5000
SERVER_WORKERS ?= 4
ALLOWED_HOSTS ?=

.PHONY: setup demo test bench ui server clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

# `mlflow run` talks to the tracking server before our entry point starts; when an http:// server is
# down it retries for minutes and ends in a traceback. CHECK_SERVER checks it first (one line, exit 1,
# in seconds), then runs the command that follows it (README "An unreachable tracking server").
CHECK_SERVER := $(PY) -m cxrstudy.tracking.server

demo: setup
	$(CHECK_SERVER) mlflow run . --env-manager local -e main

bench: setup
	$(CHECK_SERVER) mlflow run . --env-manager local -e benchmark

test: setup
	$(PY) -m pytest -q

ui: setup
	mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --host 127.0.0.1 --port 5000

server: setup
	@test -n "$(BACKEND)" || { echo "make server needs BACKEND=postgresql+psycopg2://<user>:<password>@<dbhost>:5432/<db>" >&2; exit 2; }
	mlflow server --backend-store-uri '$(BACKEND)' --artifacts-destination '$(ARTIFACTS)' \
		--host $(HOST) --port $(PORT) --workers $(SERVER_WORKERS) $(if $(ALLOWED_HOSTS),--allowed-hosts '$(ALLOWED_HOSTS)')

clean:
	rm -rf .cache mlruns mlartifacts
