# citylake — the two commands a fresh clone needs: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
UV     := $(VENV)/bin/uv
STAMP  := $(VENV)/.installed
# Installs come from the lock files (`make lock` writes them with uv from pyproject.toml), so a fresh clone,
# CI and the image get the versions the tests ran on. uv itself is pinned for the same reason.
UV_VERSION := 0.13.9
# The locks are resolved for CPython >= 3.11.3 on Linux (x86_64), as CI and the python:3.11-slim image run.
LOCK_FLAGS := --python-version 3.11.3 --python-platform linux --annotation-style line --custom-compile-command 'make lock'
# Scripts and styles GX Data Docs would load from public CDNs, vendored so the pages work offline.
ASSETS := $(VENV)/share/citylake/datadocs-assets/.citylake-assets.json
# The ADBC PostgreSQL library the fast path decodes COPY with (requirements-read-driver.txt says why 1.8.0's).
READ_DRIVER := $(VENV)/lib/citylake-read-driver/adbc_driver_postgresql/libadbc_driver_postgresql.so

.PHONY: install lock demo test lint bench clean airflow-ui browser

$(UV):
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (citylake needs Python 3.11)"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:3] < (3, 11, 3))' || \
	  { echo "error: $(PYTHON) is older than 3.11.3 (the lock files are resolved for 3.11.3 and later)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q uv==$(UV_VERSION)

# Exactly the locked versions (the runtime and dev extra), then citylake itself without resolving again
# (tests/test_dependencies.py fails when pyproject.toml asks for something the lock lacks: run `make lock`).
# Not `uv pip sync`: it would remove what `make bench` added, and uv itself, from the venv.
$(STAMP): pyproject.toml requirements-dev.lock | $(UV)
	$(UV) pip install -q --compile-bytecode --python $(PY) -r requirements-dev.lock
	$(UV) pip install -q --compile-bytecode --python $(PY) --no-deps -e .
	touch $(STAMP)

# Re-resolve both lock files from pyproject.toml, keeping every pin that still fits (uv prefers the versions
# already in the output file). The runtime lock is constrained by the dev lock, so the two always agree.
# To move a package on purpose: make lock UPGRADE='--upgrade-package duckdb' (or UPGRADE=--upgrade).
lock: | $(UV)
	$(UV) pip compile -q pyproject.toml --extra dev $(LOCK_FLAGS) $(UPGRADE) -o requirements-dev.lock
	$(UV) pip compile -q pyproject.toml $(LOCK_FLAGS) --constraint requirements-dev.lock -o requirements.lock

$(ASSETS): $(STAMP) pipelines/quality/docs_assets.py
	$(VENV)/bin/citylake quality docs-assets && touch $@ || echo "warning: Data Docs will load scripts from public CDNs"

$(READ_DRIVER): requirements-read-driver.txt | $(UV)
	rm -rf $(VENV)/lib/citylake-read-driver
	$(UV) pip install -q --python $(PY) --no-deps --require-hashes --target $(VENV)/lib/citylake-read-driver \
	  -r requirements-read-driver.txt
	touch $@

install: $(STAMP) $(ASSETS) $(READ_DRIVER)

# Headless Chromium and a CJK font for the browser tests (Debian's packages; needs root, as CI has).
# Without fonts-noto-cjk every Chinese glyph is drawn as an empty box. Installs only what is missing.
browser:
	@pkgs=""; command -v chromium >/dev/null 2>&1 || pkgs="chromium"; \
	  dpkg -s fonts-noto-cjk >/dev/null 2>&1 || pkgs="$$pkgs fonts-noto-cjk"; \
	  [ -z "$$pkgs" ] || { export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -q $$pkgs >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null && apt-get install -y -q $$pkgs >/dev/null; }; } || \
	  echo "warning: could not install$$pkgs; the browser tests skip (and fail under CI=true)"

demo: install
	$(VENV)/bin/citylake demo

lint: install
	$(VENV)/bin/ruff check pipelines dags tests benchmarks
	$(VENV)/bin/mypy pipelines

test: install lint browser
	$(PY) -m pytest -q -n 2 --dist loadfile

bench: install
	$(UV) pip install -q --compile-bytecode --python $(PY) -e '.[dev,bench]'
	@# The bench extra is not locked: dlt's s3fs moves boto3/botocore (and setuptools) off their pins, so the
	@# next `make install` (or `make test`) puts the locked versions back.
	rm -f $(STAMP)
	@# Every benchmark, then benchmarks/results.md; a smoke run: make bench BENCH_ARGS=--quick (see run_all.py --help)
	$(PY) benchmarks/run_all.py $(BENCH_ARGS)

# The Airflow UI on the same DAGs (project-local AIRFLOW_HOME, SQLite): http://localhost:8080
airflow-ui: install
	@$(PY) -c 'import sys; from pipelines.demo import run_airflow_ui; sys.exit(run_airflow_ui())'

clean:
	rm -rf data lake/catalog.db lake/warehouse lake/rejected airflow_home .pytest_cache
