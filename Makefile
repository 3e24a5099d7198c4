# citylake — the two commands a fresh clone needs: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
UV     := $(VENV)/bin/uv
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint bench clean airflow-ui

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (citylake needs Python 3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip uv
	$(UV) pip install -q --compile-bytecode --python $(PY) -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/citylake demo

lint: install
	$(VENV)/bin/ruff check pipelines dags tests benchmarks
	$(VENV)/bin/mypy pipelines

test: install lint
	$(PY) -m pytest -q

bench: install
	$(UV) pip install -q --compile-bytecode --python $(PY) -e '.[dev,bench]'
	$(PY) benchmarks/ingest_postgres.py
	$(PY) benchmarks/validate_resident.py

# The Airflow UI on the same DAGs (project-local AIRFLOW_HOME, SQLite): http://localhost:8080
airflow-ui: install
	@eval "$$($(PY) -c 'from pipelines.demo import airflow_env; from pathlib import Path; import shlex; [print(f"export {k}={shlex.quote(v)}") for k, v in airflow_env(Path.cwd()).items()]')"; \
	  AIRFLOW__CORE__EXECUTOR=LocalExecutor $(VENV)/bin/airflow standalone

clean:
	rm -rf data lake/catalog.db lake/warehouse lake/rejected airflow_home .pytest_cache
