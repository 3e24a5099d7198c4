#!/usr/bin/env bash
# The platform's PostgreSQL: one database and one owner role each for Airflow's metadata (airflow) and the
# Iceberg SQL catalog (iceberg, role citylake), neither open to PUBLIC.
#
# Run by the postgres image's entrypoint from /docker-entrypoint-initdb.d ONLY when the data volume is empty
# (first `docker compose up`). Changing AIRFLOW_DB_PASSWORD or CATALOG_DB_PASSWORD in .env later does not
# reach an existing volume: run `ALTER ROLE airflow PASSWORD '…'` (psql as postgres), or start from an empty
# volume (`docker compose down -v` deletes every database).
set -euo pipefail

: "${AIRFLOW_DB_PASSWORD:?AIRFLOW_DB_PASSWORD is not set}"
: "${CATALOG_DB_PASSWORD:?CATALOG_DB_PASSWORD is not set}"
export AIRFLOW_DB_PASSWORD CATALOG_DB_PASSWORD  # psql reads them with \getenv

# Passwords reach psql through its environment (\getenv, psql 15+) as psql variables (:'name' quotes them as
# literals): never on its command line (`-v name=…` is in argv, visible to `ps`), never pasted into the SQL text.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
\getenv airflow_password AIRFLOW_DB_PASSWORD
\getenv catalog_password CATALOG_DB_PASSWORD
CREATE ROLE airflow LOGIN PASSWORD :'airflow_password';
CREATE ROLE citylake LOGIN PASSWORD :'catalog_password';
CREATE DATABASE airflow OWNER airflow ENCODING 'UTF8';
CREATE DATABASE iceberg OWNER citylake ENCODING 'UTF8';
REVOKE ALL ON DATABASE airflow FROM PUBLIC;
REVOKE ALL ON DATABASE iceberg FROM PUBLIC;
SQL
echo "citylake: databases airflow (role airflow) and iceberg (role citylake) created"
