#!/bin/sh
# Run by the minio-init service (quay.io/minio/mc image) after MinIO is healthy; idempotent, so every
# `docker compose up` runs it again and exits 0.
#   - bucket `lake`: warehouse/ (Iceberg), rejected/, artifacts/ (GX results, Data Docs, the report), exports/
#   - policy `citylake-lake` (lake-policy.json, next to this script): objects of that bucket only, no admin
#     rights, no other bucket
#   - user LAKE_ACCESS_KEY with that policy: the keys every Airflow service uses (never the root keys)
#
# Only sh builtins and mc: the mc image (ubi-micro based) has no grep, sed or awk.
# The root credentials come in MC_HOST_root (http://user:password@minio:9000, set by docker-compose.yml), so
# they are never on a command line (`mc alias set` would put them in argv, visible to `ps` on the host).
set -eu

: "${MC_HOST_root:?MC_HOST_root is not set (http://<root user>:<root password>@minio:9000)}"
: "${LAKE_ACCESS_KEY:?LAKE_ACCESS_KEY is not set}" "${LAKE_SECRET_KEY:?LAKE_SECRET_KEY is not set}"

policy_file="${0%/*}/lake-policy.json"

mc mb --ignore-existing root/lake
mc admin policy create root citylake-lake "$policy_file"        # an existing policy is overwritten
mc admin user add root "$LAKE_ACCESS_KEY" "$LAKE_SECRET_KEY"    # an existing user gets the new secret
# Attaching a policy the user already has fails with "The specified policy change is already in effect"
# (MinIO's XMinioAdminPolicyChangeAlreadyApplied; some releases say "policy update has no net effect"),
# exit 1: that is the state we want. Any other failure stops minio-init, and with it the platform.
if out=$(mc admin policy attach root citylake-lake --user "$LAKE_ACCESS_KEY" 2>&1); then
  echo "$out"
else
  case "$out" in
    *"already in effect"*|*"no net effect"*) echo "citylake: policy citylake-lake already attached to $LAKE_ACCESS_KEY" ;;
    *) echo "$out" >&2; exit 1 ;;
  esac
fi
echo "citylake: bucket lake, policy citylake-lake, user $LAKE_ACCESS_KEY ready"
