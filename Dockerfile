# syntax=docker/dockerfile:1
# The one image of every citylake service in docker-compose.yml: Airflow 3.3 (api-server, scheduler,
# dag-processor, triggerer, Celery workers), the init service and the sample-source seeder.
# CI has no Docker engine: tests/test_compose.py parses this file and checks that it copies every path the
# tasks read at run time (settings.root / …) and that every COPY source exists.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TZ=Asia/Shanghai \
    AIRFLOW_HOME=/opt/airflow \
    CITYLAKE_ROOT=/opt/citylake

# A non-root user; group 0 so an orchestrator running the image under another uid can still write its folders.
ARG CITYLAKE_UID=50000
RUN useradd --uid "${CITYLAKE_UID}" --gid 0 --create-home --home-dir /home/citylake --shell /bin/bash citylake

WORKDIR /opt/citylake

# 1. Dependencies: exactly the versions of the lock file (uv pip compile from pyproject.toml), in their own
#    layer so a code change does not reinstall them.
COPY requirements.lock requirements-read-driver.txt ./
RUN pip install --requirement requirements.lock \
 && pip install --no-deps --require-hashes --target /usr/local/lib/citylake-read-driver \
      --requirement requirements-read-driver.txt

# 2. citylake itself, without dependencies, editable: the code runs from /opt/citylake/pipelines, so the files
#    it reads next to its modules (curate/*.sql and aqi.py, report templates and assets) are there whatever
#    the wheel's package data lists, and PROJECT_ROOT is /opt/citylake (= CITYLAKE_ROOT).
#    The build backend is pinned too and used without build isolation: otherwise pip would fetch whatever
#    setuptools is newest (pyproject says only >=68) into a throwaway environment at every build.
#    setuptools is not in requirements.lock (a build tool, not a runtime dependency); bump it here on purpose.
ARG SETUPTOOLS_VERSION=80.9.0
COPY pyproject.toml README.md ./
COPY pipelines ./pipelines
RUN pip install "setuptools==${SETUPTOOLS_VERSION}" \
 && pip install --no-deps --no-build-isolation --editable .

# 3. What tasks read at run time under settings.root: DAG files, the registry (schemas/sources), standards and
#    code lists, dataset and curated contracts, departments, grants (schemas/…), and the quality suites.
COPY dags ./dags
COPY schemas ./schemas
COPY expectations ./expectations
COPY docker/airflow ./docker/airflow

# 4. The scripts GX Data Docs would load from public CDNs, pinned by sha512, fetched once from the npm registry
#    (a mirror: --build-arg NPM_CONFIG_REGISTRY=https://registry.npmmirror.com); without them the pages still
#    render but load those scripts from the CDNs.
ARG NPM_CONFIG_REGISTRY=https://registry.npmjs.org/
RUN citylake quality docs-assets || echo "warning: Data Docs will load scripts from public CDNs"

# 5. Writable folders of the non-root user (named volumes mounted here start with this ownership).
RUN mkdir -p /opt/airflow/logs /opt/airflow/auth /opt/citylake/data /opt/citylake/lake \
 && chown -R citylake:0 /opt/airflow /opt/citylake/data /opt/citylake/lake \
 && chmod -R g=u /opt/airflow /opt/citylake/data /opt/citylake/lake

USER citylake
EXPOSE 8080 8793 8974
CMD ["airflow", "version"]
