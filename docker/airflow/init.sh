#!/bin/sh
# The airflow-init service: Airflow's metadata schema, the login, then citylake's own set-up. Idempotent:
# it runs on every `docker compose up` and the other Airflow services start only after it exits 0.
set -eu

airflow db migrate

# SimpleAuthManager reads user:role from [core] simple_auth_manager_users and the passwords from the JSON file
# [core] simple_auth_manager_passwords_file names ({"<user>": "<password>"}). The api-server opens that file
# read-write and only generates (and prints) a password for a user missing from it, so writing it here from
# the environment fixes the admin's password; the file lives on the airflow-auth volume, mode 600.
python - <<'PY'
import json
import os
import pathlib

path = pathlib.Path(os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
path.parent.mkdir(parents=True, exist_ok=True)
tmp = path.with_suffix(".tmp")
tmp.write_text(json.dumps({os.environ["AIRFLOW_ADMIN_USER"]: os.environ["AIRFLOW_ADMIN_PASSWORD"]}) + "\n")
tmp.chmod(0o600)
tmp.replace(path)
print(f"citylake: login for {os.environ['AIRFLOW_ADMIN_USER']} written to {path}")
PY

# pools from the registry, the catalog's namespaces, a write probe of the warehouse
exec citylake platform init
