#!/usr/bin/env bash
# The sample source PostgreSQL (a department's server): the read-only account the lake reads with. Its
# databases (population, social_insurance, housing_fund) and the SELECT grants are made by the source-seed
# service (`citylake platform seed-sources --reader citylake_reader`).
#
# Run by the postgres image's entrypoint from /docker-entrypoint-initdb.d ONLY on an empty data volume.
set -euo pipefail

: "${SOURCE_READER_PASSWORD:?SOURCE_READER_PASSWORD is not set}"
export SOURCE_READER_PASSWORD  # psql reads it with \getenv

# The password reaches psql through its environment (\getenv), not its command line (visible to `ps`).
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
\getenv reader_password SOURCE_READER_PASSWORD
CREATE ROLE citylake_reader LOGIN PASSWORD :'reader_password';
SQL
echo "citylake: read-only role citylake_reader created"
