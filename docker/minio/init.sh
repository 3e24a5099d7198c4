#!/bin/sh
# Run by the minio-init service (minio/mc image) after MinIO is healthy; idempotent, so every
# `docker compose up` may run it again.
#   - bucket `lake`: warehouse/ (Iceberg), rejected/, artifacts/ (GX results, Data Docs, the report), exports/
#   - policy `citylake-lake` (lake-policy.json): objects of that bucket only, no admin rights, no other bucket
#   - user LAKE_ACCESS_KEY with that policy: the keys every Airflow service uses (never the root keys)
set -eu

: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}" "${LAKE_ACCESS_KEY:?}" "${LAKE_SECRET_KEY:?}"

mc alias set root http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing root/lake
mc admin policy create root citylake-lake /init/lake-policy.json    # an existing policy is overwritten
mc admin user add root "$LAKE_ACCESS_KEY" "$LAKE_SECRET_KEY"         # an existing user gets the new secret
if ! mc admin user info root "$LAKE_ACCESS_KEY" | grep -q "citylake-lake"; then
  mc admin policy attach root citylake-lake --user "$LAKE_ACCESS_KEY"
fi
echo "citylake: bucket lake, policy citylake-lake, user $LAKE_ACCESS_KEY ready"
