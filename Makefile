# Caldicott: the commands a new user needs. Everything lives inside the checkout (.venv, .airflow, var/).
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
MESHV   := .venv-mesh
MSTAMP  := $(MESHV)/.installed
LSTAMP  := $(VENV)/.ldap-installed

.PHONY: help venv demo test test-fast up lint bench clean migrate

help:
	@echo "make demo   - set up, seed synthetic data, run every DAG end to end through Airflow, summarise"
	@echo "              (DEMO_ARGS=--json: the summary as JSON; DEMO_ARGS='--only gp_letters': one flow)"
	@echo "make test   - set up, then the whole test suite (what CI runs), with line coverage"
	@echo "make test-fast - the fast inner loop: domain, DAG integrity and security tiers (about a minute)"
	@echo "make up     - set up, start Airflow and the stand-in peers on 127.0.0.1 to click around"
	@echo "make lint   - ruff"
	@echo "make migrate - create / upgrade the state database (STATE_URL=..., default the demo's var/demo/state.db)"
	@echo "make bench  - the benchmarks in bench/ (figures go to bench/RESULTS.md)"

# pip is not --quiet for the big install: a first run downloads ~250 MB (about 220 packages, 1.2 GB on disk), and
# a person should see it move. Later runs skip this target until requirements*.txt or constraints.txt change.
$(STAMP): requirements.txt constraints.txt pyproject.toml
	@command -v $(PY) >/dev/null || { echo "need $(PY) (Python 3.11)"; exit 1; }
	@echo "==> $(VENV): Airflow and Caldicott's dependencies (first time: ~250 MB download, 1.2 GB on disk; pip lists each package)"
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --progress-bar on -r requirements.txt -c constraints.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)
	@echo "==> $(VENV) ready"

# python-ldap (directory sign-in) compiles against OpenLDAP's headers, which a fresh machine may lack: best-effort.
# On failure nothing is stamped (the next run tries again) and the LDAP tests skip with the reason.
$(LSTAMP): requirements-ldap.txt constraints.txt | $(STAMP)
	@echo "==> python-ldap for directory sign-in (best-effort: compiles against OpenLDAP's headers)"
	@$(BIN)/pip install --quiet -r requirements-ldap.txt -c constraints.txt && touch $(LSTAMP) \
	  || echo "WARNING: python-ldap did not install (needs libldap2-dev libsasl2-dev, gcc and the Python headers;" \
	          "see requirements-ldap.txt): directory sign-in tests will skip"

# The MESH sandbox is a test peer with dependencies that clash with Airflow's: its own venv.
$(MSTAMP): requirements-mesh.txt
	@echo "==> $(MESHV): NHS England's mesh-sandbox, a test peer (~70 MB)"
	test -d $(MESHV) || $(PY) -m venv $(MESHV)
	$(MESHV)/bin/pip install --progress-bar on -r requirements-mesh.txt
	touch $(MSTAMP)

venv: $(STAMP) $(MSTAMP) $(LSTAMP)

demo: venv
	$(BIN)/python -m devtools.demo $(DEMO_ARGS)

test: venv
	$(BIN)/python -m devtools.bootstrap
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest $(RANDOM_ORDER) $(COVERAGE) $(PYTEST_ARGS)

# Tests run in a random order (pytest-randomly), so a test that passes only after another fails here, not in a
# colleague's reordered run. The seed is printed in pytest's header ("Using --randomly-seed=N"); repeat an order with
# PYTEST_ARGS=--randomly-seed=N, or switch it off with RANDOM_ORDER='-p no:randomly'. The e2e tier
# shares one Airflow and keeps its file order, last (tests/e2e/conftest.py).
RANDOM_ORDER ?= -p randomly

# Line coverage of the domain and the Airflow adapters, measured in the pytest process (code that runs inside
# the e2e tests' Airflow workers is exercised but not counted).
COVERAGE := --cov=caldicott --cov=caldicott_airflow --cov-report=term:skip-covered

test-fast: venv
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest $(RANDOM_ORDER) tests/unit tests/dags tests/security $(PYTEST_ARGS)

up: venv
	$(BIN)/python -m devtools.up

lint: venv
	$(BIN)/ruff check .

bench: venv
	$(BIN)/python -m bench.run_all

# The state database's migration is a deployment step (tasks only verify the schema): the demo, `make up` and the
# tests run it through devtools.bootstrap; after pulling a release with a new step, run this (or the compose
# deployment's airflow-init, which runs python -m caldicott_airflow.state_migration).
STATE_URL ?= sqlite:///var/demo/state.db
migrate: venv
	$(BIN)/python -m caldicott.state.migrate --url $(STATE_URL)

clean:
	rm -rf var .airflow

# mypy --strict over the domain (include/caldicott), every module, configured in pyproject.toml [tool.mypy] (only
# untyped third-party packages are exempted there, by ignore_missing_imports).
.PHONY: typecheck
typecheck: venv
	$(BIN)/mypy
