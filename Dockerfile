# Image for the Airflow services in docker-compose.yml (users' machines; CI does not build it).
FROM python:3.11-slim
WORKDIR /opt/citylake
COPY pyproject.toml README.md ./
COPY pipelines ./pipelines
RUN pip install --no-cache-dir -e . psycopg2-binary "apache-airflow[celery]==3.3.2"
COPY dags ./dags
COPY schemas ./schemas
