# citylake — the two commands a fresh clone needs: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
UV     := $(VENV)/bin/uv
STAMP  := $(VENV)/.installed
# Scripts and styles GX Data Docs would load from public CDNs, vendored so the pages work offline.
ASSETS := $(VENV)/share/citylake/datadocs-assets/.citylake-assets.json

.PHONY: install demo test lint bench clean airflow-ui browser

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (citylake needs Python 3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip uv
	$(UV) pip install -q --compile-bytecode --python $(PY) -e '.[dev]'
	touch $(STAMP)

$(ASSETS): $(STAMP) pipelines/quality/docs_assets.py
	$(VENV)/bin/citylake quality docs-assets && touch $@ || echo "warning: Data Docs will load scripts from public CDNs"

install: $(STAMP) $(ASSETS)

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
	$(PY) -m pytest -q

bench: install
	$(UV) pip install -q --compile-bytecode --python $(PY) -e '.[dev,bench]'
	$(PY) benchmarks/ingest_postgres.py
	$(PY) benchmarks/validate_resident.py
	$(PY) benchmarks/open_export.py
	$(PY) benchmarks/share_delivery.py

# The Airflow UI on the same DAGs (project-local AIRFLOW_HOME, SQLite): http://localhost:8080
airflow-ui: install
	@eval "$$($(PY) -c 'from pipelines.demo import airflow_env; from pathlib import Path; import shlex; [print(f"export {k}={shlex.quote(v)}") for k, v in airflow_env(Path.cwd()).items()]')"; \
	  AIRFLOW__CORE__EXECUTOR=LocalExecutor $(VENV)/bin/airflow standalone

clean:
	rm -rf data lake/catalog.db lake/warehouse lake/rejected airflow_home .pytest_cache
