"""docker-compose.yml, .env.example and the Dockerfile, checked without a Docker engine (CI has none).

Three checks, each catching what the others cannot: the compose file against the compose-spec JSON schema
(offline: check-jsonschema vendors it), every variable it interpolates defined in .env.example (and nothing
else defined there), and every path the tasks read at run time copied by the Dockerfile (parsed with
dockerfile-parse). Then the platform's wiring: services, workers, init, shared settings, keys, sources.

The files are read under ``CITYLAKE_ROOT`` (default: this checkout), so the same tests can judge another
tree, e.g. an export of an older commit.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement

from pipelines.registry import load_registry
from pipelines.seed.servers import server_of
from pipelines.settings import PROJECT_ROOT, load_settings

ROOT = Path(os.environ.get("CITYLAKE_ROOT") or PROJECT_ROOT)
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|MASTER_KEY")

# Compose's interpolation (https://docs.docker.com/reference/compose-file/interpolation/): ``$$`` is a literal
# ``$``; ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}``,
# ``${VAR:+alt}``, ``${VAR+alt}`` and ``$VAR``. Hand-written: no Python library implements compose's rules,
# and only string values are interpolated (never comments), so it runs over the parsed YAML's strings.
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])((?:[^{}]|\{[^{}]*\})*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def _url(value: str) -> Any:
    """A compose URL's parts, each interpolation replaced by ``x`` (a password's ``${P:?message}`` would
    otherwise end the user name at its colon)."""
    return urlsplit(_VAR.sub("x", value))


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


def interpolated_names(text: str) -> set[str]:
    """Every variable a compose string interpolates (defaults and messages included, ``$$`` skipped)."""
    names: set[str] = set()
    for m in _VAR.finditer(text):
        if m.group(0) == "$$":
            continue
        names.add(m.group(1) or m.group(4))
        if m.group(3):
            names |= interpolated_names(m.group(3))
    return names


def interpolate(text: str, env: dict[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1) or m.group(4), m.group(2) or "", m.group(3) or ""
        value = env.get(name)
        unset = value is None or (op.startswith(":") and value == "")
        if op.endswith("-"):
            return interpolate(arg, env) if unset else str(value)
        if op.endswith("?"):
            if unset:
                raise AssertionError(f"{name} is required ({arg}) and .env.example does not set it")
            return str(value)
        if op.endswith("+"):
            return "" if unset else interpolate(arg, env)
        if value is None:
            raise AssertionError(f"${{{name}}} is not set by .env.example")
        return value

    return _VAR.sub(one, text)


def _interpolate_all(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {k: _interpolate_all(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate_all(v, env) for v in node]
    return node


def env_example() -> dict[str, str]:
    """``NAME=value`` lines of .env.example; each must have a comment line right above it."""
    assert ENV_EXAMPLE.is_file(), f"{ENV_EXAMPLE} is missing: users copy it to .env"
    values: dict[str, str] = {}
    previous = ""
    for number, line in enumerate(ENV_EXAMPLE.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            name, sep, value = stripped.partition("=")
            assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", name), f".env.example:{number}: not NAME=value: {line!r}"
            assert name not in values, f".env.example:{number}: {name} defined twice"
            assert previous.startswith("#"), f".env.example:{number}: {name} has no comment above it"
            values[name] = value
        previous = stripped
    return values


# --- 1. the compose-spec schema ------------------------------------------------------------------------------


def _check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).with_name("check-jsonschema")
    # offline: the compose-spec schema is vendored in the package; a network attempt would hit a dead proxy
    env = {**os.environ, "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}
    return subprocess.run([str(binary), "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True, env=env, timeout=60)


def test_compose_file_matches_the_compose_spec_schema_as_written_and_interpolated(tmp_path: Path) -> None:
    raw = _check_jsonschema(COMPOSE)
    assert raw.returncode == 0, raw.stdout + raw.stderr
    # the values docker compose would see with .env.example as .env: still valid (and every variable resolves)
    resolved = _interpolate_all(_compose(), env_example())
    path = tmp_path / "compose.interpolated.json"
    path.write_text(json.dumps(resolved), encoding="utf-8")
    checked = _check_jsonschema(path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


# --- 2. .env.example ------------------------------------------------------------------------------------------


def test_every_interpolated_variable_is_in_env_example_and_nothing_else() -> None:
    used = set().union(*(interpolated_names(s) for s in _strings(_compose())))
    defined = env_example()
    assert sorted(used - set(defined)) == [], "interpolated by docker-compose.yml but not in .env.example"
    assert sorted(set(defined) - used) == [], "in .env.example but docker-compose.yml never uses it"
    # no real secret in the example: every secret is a placeholder
    for name, value in defined.items():
        if SECRET_NAME.search(name):
            assert value == "change-me", f".env.example: {name} must be the placeholder change-me, not a value"


def test_secrets_are_required_from_the_environment_never_literal() -> None:
    text = COMPOSE.read_text(encoding="utf-8")
    strings = _strings(_compose())
    for name in env_example():
        if SECRET_NAME.search(name) or name in ("LAKE_ACCESS_KEY", "MINIO_ROOT_USER", "AIRFLOW_ADMIN_USER"):
            assert any(re.search(rf"\$\{{{name}:\?[^}}]+\}}", s) for s in strings), \
                f"{name}: no ${{{name}:?message}} in docker-compose.yml (a missing value must stop compose)"
    for match in re.finditer(r"^\s*[A-Z_]*(PASSWORD|SECRET|_KEY|_AUTH):\s*(\S+)", text, re.M):
        assert match.group(2).startswith("${"), match.group(0)
    for password in re.findall(r"://[^:/\s@]*:([^@\s]+)@", text):
        assert password.startswith("${"), password


ARGV_SECRET = re.compile(r"PASSWORD|SECRET|KEY|FERNET|AUTH|TOKEN")


def _argv_strings(service: dict[str, Any]) -> list[str]:
    """What becomes a process's argv: ``command``, ``entrypoint`` and the healthcheck's ``test``."""
    return _strings([service.get("command"), service.get("entrypoint"), (service.get("healthcheck") or {}).get("test")])


def _shell_secret_refs_outside_heredocs(script: str) -> list[str]:
    """``$NAME``/``${NAME}`` secret references a shell script passes as arguments: every reference outside a
    here-document's body (a here-document is stdin, not argv). After compose's ``$$`` → ``$``."""
    refs, terminator = [], None
    for line in script.splitlines():
        if terminator is not None:
            if line.strip() == terminator:
                terminator = None
            continue
        refs += [n for n in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", line) if ARGV_SECRET.search(n)]
        heredoc = re.search(r"<<-?\s*['\"]?(\w+)", line)
        if heredoc:
            terminator = heredoc.group(1)
    return refs


def test_no_secret_on_a_command_line() -> None:
    """A secret interpolated into ``command``/``entrypoint``/``healthcheck`` ends up in a process's argv, which
    ``ps`` on the Docker host shows to every user: secrets go in through the environment (or stdin) only."""
    for name, service in _compose()["services"].items():
        for text in _argv_strings(service):
            leaked = sorted(n for n in interpolated_names(text) if ARGV_SECRET.search(n))
            assert not leaked, f"{name}: {leaked} interpolated into a command line: {text!r}"
            shell = text.replace("$$", "$")
            assert not _shell_secret_refs_outside_heredocs(shell), f"{name}: a secret passed as an argument: {text!r}"
    # the check itself: the old redis command is caught, the stdin form passes
    assert interpolated_names('redis-server --requirepass ${REDIS_PASSWORD}') == {"REDIS_PASSWORD"}
    assert _shell_secret_refs_outside_heredocs('redis-server --requirepass "$REDIS_PASSWORD"') == ["REDIS_PASSWORD"]
    assert _shell_secret_refs_outside_heredocs("exec redis-server - <<EOF\nrequirepass $REDIS_PASSWORD\nEOF\n") == []
    redis = _compose()["services"]["redis"]
    assert "--requirepass" not in " ".join(_argv_strings(redis)) and "requirepass" in " ".join(_argv_strings(redis))


def test_images_are_pinned() -> None:
    """A floating tag (``latest``, a bare name) makes every ``docker compose pull`` a different platform."""
    services = _compose()["services"]
    for name, service in services.items():
        image = service.get("image", "")
        if "build" in service:
            continue  # citylake's own image, built from this tree
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag and tag not in ("", "latest"), f"{name}: {image!r} is not pinned"
        # a release line that only takes bug and security fixes: PostgreSQL's major (its on-disk format and
        # features change only with the major), major.minor for the others, a release tag for MinIO
        line = r"\d+" if repo == "postgres" else r"\d+\.\d+(\.\d+)?"
        assert re.fullmatch(rf"{line}|RELEASE\.\d{{4}}-\d\d-\d\dT\d\d-\d\d-\d\dZ", tag), f"{name}: {image!r}"
    # Docker Hub's minio/* repositories are gone: MinIO's own quay.io registry, release tags
    for name in ("minio", "minio-init"):
        assert services[name]["image"].startswith("quay.io/minio/"), services[name]["image"]


def test_published_ports_listen_on_localhost_unless_configured() -> None:
    env = env_example()
    assert env["CITYLAKE_PUBLISH_ADDRESS"] == "127.0.0.1"
    published = [(n, str(p)) for n, s in _compose()["services"].items() for p in s.get("ports", [])]
    assert {n for n, _p in published} == {"airflow-apiserver", "minio"}, published
    for name, port in published:
        assert port.startswith("${CITYLAKE_PUBLISH_ADDRESS:-127.0.0.1}:"), f"{name}: {port} listens on every interface"
    common = _common_env(_compose())
    assert common["AIRFLOW__API__BASE_URL"] == "${AIRFLOW_BASE_URL:-http://localhost:8080/}"
    assert env["AIRFLOW_BASE_URL"] == "http://localhost:8080/"


# --- docker/minio/init.sh under a stub mc ---------------------------------------------------------------------

# A stand-in for MinIO's client with the outputs and exit codes of mc RELEASE.2025-08-13 (the pinned image):
# it logs its argv, keeps the server's state (bucket, policy, user, attachment) in files, and refuses a second
# attach with mc's "already in effect" error. Only sh builtins, as in the image (no grep, sed, awk, touch).
STUB_MC = r"""#!/bin/sh
printf '%s\n' "$*" >> "$MC_LOG"
case "${MC_HOST_root:-}" in
  http://*:*@minio:9000) ;;
  *) echo "mc: <ERROR> Unable to initialize new alias from the provided credentials." >&2; exit 1 ;;
esac
case "$1 $2 $3" in
  "mb --ignore-existing root/lake")
    : > "$MC_STATE/bucket"; echo 'Bucket created successfully `root/lake`.' ;;
  "admin policy create")
    [ -f "$6" ] || { echo "mc: <ERROR> Unable to read the policy file $6" >&2; exit 1; }
    : > "$MC_STATE/policy"; echo "Created policy \`$5\` successfully." ;;
  "admin user add")
    [ "$#" -eq 6 ] || { echo "mc: <ERROR> Incorrect number of arguments" >&2; exit 1; }
    : > "$MC_STATE/user"; echo "Added user \`$5\` successfully." ;;
  "admin user info")
    printf 'AccessKey: %s\nStatus: enabled\nPolicyName: \nMemberOf: []\n' "$5" ;;
  "admin policy attach")
    [ -e "$MC_STATE/policy" ] && [ -e "$MC_STATE/user" ] || { echo "mc: <ERROR> policy or user missing" >&2; exit 1; }
    if [ -n "${MC_FAIL_ATTACH:-}" ]; then
      echo "mc: <ERROR> Unable to make user/group policy association. Access Denied." >&2; exit 1
    fi
    if [ -e "$MC_STATE/attached" ]; then
      echo "mc: <ERROR> Unable to make user/group policy association. The specified policy change is already in effect." >&2
      exit 1
    fi
    : > "$MC_STATE/attached"; printf 'Attached Policies: [%s]\nTo User: %s\n' "$5" "$7" ;;
  *) echo "mc: <ERROR> stub: unexpected call: $*" >&2; exit 1 ;;
esac
"""


def _minio_init_script() -> Path:
    init = _compose()["services"]["minio-init"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in init["volumes"]}
    assert init["entrypoint"][-1].startswith("/init/"), init["entrypoint"]
    return ROOT / mounted["/init"] / PurePosixPath(init["entrypoint"][-1]).relative_to("/init")


@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash"])
def test_minio_init_attaches_the_policy_on_the_first_and_every_later_run(tmp_path: Path, shell: str) -> None:
    if not Path(shell).exists():
        pytest.skip(f"{shell} is not installed")
    bindir, state = tmp_path / "bin", tmp_path / "state"
    bindir.mkdir()
    state.mkdir()
    (bindir / "mc").write_text(STUB_MC, encoding="utf-8")
    (bindir / "mc").chmod(0o755)
    for tool in ("grep", "sed", "awk", "tr", "cut", "dirname"):  # the image has none of them: nor does this PATH
        assert shutil.which(tool, path=str(bindir)) is None
    env_compose = _compose()["services"]["minio-init"]["environment"]
    assert env_compose["MC_HOST_root"] == "http://${MINIO_ROOT_USER}:${MINIO_ROOT_PASSWORD}@minio:9000"
    secret = "lake-secret-Zq9"
    log = tmp_path / "mc.log"
    env = {"PATH": str(bindir), "MC_LOG": str(log), "MC_STATE": str(state),
           "MC_HOST_root": "http://citylake-root:root-pw-8x@minio:9000",
           # the access key equal to the policy name: what made the old `grep -q citylake-lake` always match
           "LAKE_ACCESS_KEY": "citylake-lake", "LAKE_SECRET_KEY": secret}
    script = _minio_init_script()
    expected = ["mb --ignore-existing root/lake",
                f"admin policy create root citylake-lake {script.parent}/lake-policy.json",
                f"admin user add root citylake-lake {secret}",
                "admin policy attach root citylake-lake --user citylake-lake"]
    for run in (1, 2):  # the first `docker compose up`, then every later one
        log.write_text("", encoding="utf-8")
        done = subprocess.run([shell, str(script)], env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, (run, done.stdout, done.stderr)
        assert log.read_text(encoding="utf-8").splitlines() == expected, run
        assert (state / "attached").exists()
        assert "ready" in done.stdout.splitlines()[-1] and secret not in done.stdout + done.stderr
        if run == 2:
            assert "already attached" in done.stdout, done.stdout
    # another attach failure stops minio-init (and with it the platform) with mc's message
    done = subprocess.run([shell, str(script)], env={**env, "MC_FAIL_ATTACH": "1"}, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 1 and "Access Denied" in done.stderr, (done.stdout, done.stderr)
    # without the root alias in the environment it names what is missing, before any mc call
    log.write_text("", encoding="utf-8")
    done = subprocess.run([shell, str(script)], env={k: v for k, v in env.items() if k != "MC_HOST_root"},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "MC_HOST_root" in done.stderr and log.read_text(encoding="utf-8") == ""


# --- 3. the Dockerfile ----------------------------------------------------------------------------------------


def _dockerfile() -> DockerfileParser:
    assert DOCKERFILE.is_file()
    return DockerfileParser(fileobj=io.BytesIO(DOCKERFILE.read_bytes()))  # it reads the object lazily


def _copies(parser: DockerfileParser) -> list[tuple[list[str], PurePosixPath]]:
    """(sources, absolute destination) of every COPY/ADD, relative destinations resolved against WORKDIR."""
    workdir = PurePosixPath("/")
    out = []
    for item in parser.structure:
        if item["instruction"] == "WORKDIR":
            workdir = workdir / item["value"].strip()
        if item["instruction"] in ("COPY", "ADD"):
            value = item["value"].strip()
            args = json.loads(value) if value.startswith("[") else shlex.split(value)
            args = [a for a in args if not a.startswith("--")]
            assert not any(a.startswith("--from") for a in shlex.split(value)), "multi-stage COPY: extend this test"
            *sources, dest = args
            out.append((sources, workdir / dest))
    return out


def _paths_tasks_read() -> set[str]:
    """Paths under the project root that code reads at run time, from the code itself: ``settings.root / "x"``
    (and ``root / CONSTANT`` for the two constants used that way), the Settings defaults that live under the
    root, the DAG folder, the package."""
    from pipelines.departments import DEPARTMENTS_FILE
    from pipelines.resource_classification import FILE as CLASSIFICATION_FILE

    found = {"pipelines", "dags", DEPARTMENTS_FILE.as_posix(), CLASSIFICATION_FILE.as_posix()}
    pattern = re.compile(r"settings\.root\s*/\s*\"([^\"]+)\"(?:\s*/\s*\"([^\"]+)\")?")
    for folder in ("pipelines", "dags"):
        for path in (PROJECT_ROOT / folder).rglob("*.py"):
            for m in pattern.finditer(path.read_text(encoding="utf-8")):
                found.add("/".join(p for p in m.groups() if p))
    fake_root = Path("/citylake-root")
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("CITYLAKE_")}
    try:
        os.environ["CITYLAKE_ROOT"] = str(fake_root)
        settings = load_settings()
    finally:
        os.environ.pop("CITYLAKE_ROOT")
        os.environ.update(saved)
    for path in (settings.registry_dir, settings.grants):
        found.add(path.relative_to(fake_root).as_posix())
    assert {"schemas", "expectations", "schemas/sources", "schemas/grants"} <= found, found  # the grep still works
    return found


def test_dockerfile_copies_every_path_the_tasks_read() -> None:
    parser = _dockerfile()
    services = _compose()["services"]
    root_in_image = PurePosixPath(services["airflow-scheduler"]["environment"]["CITYLAKE_ROOT"])
    copies = _copies(parser)
    for path in sorted(_paths_tasks_read()):
        covered = [(s, d) for sources, d in copies for s in sources
                   if (path == s.rstrip("/") or path.startswith(s.rstrip("/") + "/")) and d == root_in_image / s.rstrip("/")]
        assert covered, f"the Dockerfile does not copy {path} to {root_in_image / path} (tasks read it there)"
    assert parser.envs.get("CITYLAKE_ROOT") == str(root_in_image), "the image's CITYLAKE_ROOT and compose's differ"
    # the dependencies come from the lock file, the project without resolving again
    runs = " ".join(i["value"] for i in parser.structure if i["instruction"] == "RUN")
    assert (ROOT / "requirements.lock").is_file(), "requirements.lock is missing"
    assert any("requirements.lock" in sources for sources, _d in copies) and "requirements.lock" in runs
    assert re.search(r"pip install[^&;]*--no-deps", runs), "the project must be installed with --no-deps"
    # the PostgreSQL read driver where postgres_fast.READ_DRIVER looks for it under the image's prefix (/usr/local)
    from pipelines.extract.postgres_fast import READ_DRIVER

    target = re.search(r"pip install[^&;]*--require-hashes[^&;]*--target (\S+)[^&;]*requirements-read-driver\.txt", runs)
    assert target and any("requirements-read-driver.txt" in sources for sources, _d in copies), runs
    prefix_relative = READ_DRIVER.relative_to(sys.prefix).parts[:2]  # lib/citylake-read-driver
    assert PurePosixPath(target.group(1)) == PurePosixPath("/usr/local", *prefix_relative), target.group(1)
    # ... and built by a pinned setuptools, without build isolation (which would fetch the newest one each build)
    assert re.search(r"pip install[^&;]*--no-build-isolation[^&;]*--editable", runs), runs
    pinned = re.search(r'pip install "?setuptools==([^"\s]+)', runs)
    assert pinned, "the build backend must be pinned (setuptools==…)"
    version = parser.args.get(pinned.group(1).strip("${}"), pinned.group(1))
    build = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["build-system"]
    assert build["build-backend"] == "setuptools.build_meta"
    wanted = next(Requirement(r) for r in build["requires"] if Requirement(r).name == "setuptools")
    assert re.fullmatch(r"\d+\.\d+\.\d+", version) and version in wanted.specifier, (version, wanted)
    assert parser.baseimage.startswith("python:3.11"), parser.baseimage
    users = [i["value"].strip() for i in parser.structure if i["instruction"] == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must run as a non-root user"
    # the compose file's init script is in the image where the command runs it
    init = " ".join(map(str, _command(services["airflow-init"])))
    script = re.search(r"(/\S+\.sh)", init)
    assert script, init
    rel = PurePosixPath(script.group(1)).relative_to(root_in_image).as_posix()
    assert (ROOT / rel).is_file() and any(rel.startswith(s.rstrip("/")) for sources, _d in copies for s in sources)


def test_every_copy_source_exists_and_is_not_dockerignored() -> None:
    assert (ROOT / ".dockerignore").is_file(), ".dockerignore is missing: the build context would hold .venv, data, .env"
    ignored = [line.strip().lstrip("/") for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
               if line.strip() and not line.startswith("#")]  # Docker: "/x" and "x" both mean x at the root
    assert {".venv", "data", "lake", "airflow_home", ".git", ".env"} <= set(ignored)
    for sources, _dest in _copies(_dockerfile()):
        for source in sources:
            assert list(ROOT.glob(source.rstrip("/"))), f"COPY {source}: not in the repository"
            assert source.split("/")[0] not in ignored, f"COPY {source}: excluded by .dockerignore"


# --- the platform's wiring ------------------------------------------------------------------------------------


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else list(command)


def _common_env(spec: dict[str, Any]) -> dict[str, Any]:
    common = spec.get("x-airflow-common", {}).get("environment")
    assert isinstance(common, dict), "no x-airflow-common with the Airflow services' shared environment"
    return common


def _airflow_services(services: dict[str, Any]) -> dict[str, Any]:
    return {name: s for name, s in services.items() if name.startswith("airflow-")}


def test_services_workers_and_init_are_wired() -> None:
    spec = _compose()
    services = spec["services"]
    assert {"postgres", "redis", "minio", "minio-init", "source-postgres", "source-mariadb", "source-seed",
            "airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
            "airflow-triggerer"} <= set(services)
    workers = {n: s for n, s in services.items() if _command(s)[:3] == ["airflow", "celery", "worker"]}
    replicas = sum(int(s.get("deploy", {}).get("replicas", 1)) for s in workers.values())
    assert replicas == 2, f"two Celery workers expected: {sorted(workers)}"
    names = {s["environment"].get("CITYLAKE_HOSTNAME") for s in workers.values()}
    assert len(names) == 2 and None not in names, "each worker needs its own CITYLAKE_HOSTNAME"
    for name, s in workers.items():
        assert s.get("hostname") == s["environment"]["CITYLAKE_HOSTNAME"], name  # logs fetched by that name
    commands = {n: _command(s)[:2] for n, s in services.items()}
    assert commands["airflow-apiserver"] == ["airflow", "api-server"]
    assert commands["airflow-scheduler"] == ["airflow", "scheduler"]
    assert commands["airflow-dag-processor"] == ["airflow", "dag-processor"]
    assert commands["airflow-triggerer"] == ["airflow", "triggerer"]

    # init: db migrate, then citylake's own init; every other Airflow service waits for it to succeed
    init_cmd = " ".join(_command(services["airflow-init"]))
    script = ROOT / PurePosixPath(re.search(r"/opt/citylake/(\S+\.sh)", init_cmd).group(1))  # type: ignore[union-attr]
    body = script.read_text(encoding="utf-8")
    assert body.index("airflow db migrate") < body.index("citylake platform init")
    assert "SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" in body
    assert services["airflow-init"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["airflow-init"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    for name, s in _airflow_services(services).items():
        if name != "airflow-init":
            assert s["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully", name
            assert "healthcheck" in s, f"{name}: no healthcheck"
    for name in workers:
        assert services[name]["depends_on"]["source-seed"]["condition"] == "service_completed_successfully"
    # a condition names a service that can meet it
    for name, s in services.items():
        for dep, cond in (s.get("depends_on") or {}).items():
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy: it has no healthcheck"
            if cond["condition"] == "service_completed_successfully":
                assert services[dep].get("restart") == "no", f"{name} waits for one-shot {dep}, which restarts"


def test_airflow_services_share_one_environment() -> None:
    spec = _compose()
    common = _common_env(spec)
    for key in ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY"):
        assert common.get(key, "").startswith("${"), key
    assert common["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    # Airflow derives its async engine's URL by mapping postgresql to asyncpg (not installed): set it
    sync, async_ = (_VAR.sub("x", common[f"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN{s}"]) for s in ("", "_ASYNC"))
    assert async_ == sync
    assert common["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg://")
    api = urlsplit(common["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert api.hostname == "airflow-apiserver" and api.port == 8080 and api.path == "/execution/"
    assert "airflow-apiserver" in spec["services"]
    assert common["AIRFLOW__CORE__HOSTNAME_CALLABLE"] == "pipelines.platform.hostname.worker_hostname"
    assert common["AIRFLOW__CORE__AUTH_MANAGER"].endswith("SimpleAuthManager")
    assert common["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].endswith(":admin")
    for key in ("CITYLAKE_CATALOG_URI", "CITYLAKE_WAREHOUSE", "CITYLAKE_S3_ENDPOINT", "CITYLAKE_REJECTED_DIR",
                "CITYLAKE_EXPORTS_DIR", "CITYLAKE_ARTIFACTS_DIR", "CITYLAKE_SHARE_MASTER_KEY"):
        assert common.get(key), key
    assert common["CITYLAKE_ARTIFACTS_DIR"] == "s3://lake/artifacts"
    extras = {"CITYLAKE_HOSTNAME", "AIRFLOW_ADMIN_USER", "AIRFLOW_ADMIN_PASSWORD"}
    for name, s in _airflow_services(spec["services"]).items():
        env = s["environment"]
        assert {k: v for k, v in env.items() if k not in extras} == common, f"{name} does not use the common env"
    # the image services outside Airflow (the seeder) don't get Airflow's secrets
    assert "AIRFLOW__CORE__FERNET_KEY" not in spec["services"]["source-seed"]["environment"]


def test_the_lake_uses_the_lake_user_and_its_bucket_policy() -> None:
    spec = _compose()
    common = _common_env(spec)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert "MINIO_ROOT" not in common[key] and "LAKE_" in common[key], f"{key}: the lake user's key, not root"
    for name, s in spec["services"].items():
        if name not in ("minio", "minio-init"):
            assert "MINIO_ROOT" not in json.dumps(s), f"{name} sees MinIO's root credentials"
    init = spec["services"]["minio-init"]
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    mounted = {v.split(":")[1]: v.split(":")[0] for v in init["volumes"]}
    folder = ROOT / mounted["/init"]
    script = (folder / "init.sh").read_text(encoding="utf-8")
    assert "mc admin user add" in script and "mc admin policy attach" in script
    policy = json.loads((folder / "lake-policy.json").read_text(encoding="utf-8"))
    resources = {r for st in policy["Statement"] for r in st["Resource"]}
    assert all(":::*" not in r for r in resources), "the policy must name its bucket, not every bucket"
    buckets = {r.split(":::")[1].split("/")[0] for r in resources}
    for key in ("CITYLAKE_WAREHOUSE", "CITYLAKE_REJECTED_DIR", "CITYLAKE_ARTIFACTS_DIR", "CITYLAKE_EXPORTS_DIR"):
        bucket = urlsplit(common[key]).netloc
        assert bucket in buckets and f"mc mb --ignore-existing root/{bucket}" in script, key


def test_postgres_databases_and_roles_match_the_urls() -> None:
    spec = _compose()
    common = _common_env(spec)
    pg = spec["services"]["postgres"]
    init_dir = next(v.split(":")[0] for v in pg["volumes"] if ":/docker-entrypoint-initdb.d" in v)
    sql = " ".join(p.read_text(encoding="utf-8") for p in (ROOT / init_dir).glob("*.sh"))
    for key in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "CITYLAKE_CATALOG_URI"):
        url = _url(common[key])
        user, database = url.username, url.path.strip("/")
        assert url.hostname == "postgres"
        assert re.search(rf"CREATE ROLE {user} LOGIN PASSWORD", sql), f"{key}: role {user} is never created"
        assert re.search(rf"CREATE DATABASE {database} OWNER {user}", sql), f"{key}: database {database}"
    assert _url(common["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]).path != _url(common["CITYLAKE_CATALOG_URI"]).path


def test_every_sql_system_is_wired_to_a_seeded_source_server() -> None:
    common = _common_env(_compose())
    systems, errors = load_registry(PROJECT_ROOT / "schemas" / "sources")
    assert not errors
    sql_systems = {code: s for code, s in systems.items() if s.tables}
    assert len(sql_systems) >= 6
    hosts = {"postgres": ("postgresql+psycopg", "source-postgres"), "mysql": ("mysql+pymysql", "source-mariadb")}
    for code, system in sql_systems.items():
        key = f"CITYLAKE_CONN_{system.connection.upper()}"
        assert key in common, f"{code}: {key} is not set, so the workers would read the demo's SQLite file"
        url = _url(common[key])
        scheme, host = hosts[server_of(code)]
        assert (url.scheme, url.hostname, url.path.strip("/")) == (scheme, host, code), f"{key}: {common[key]}"
        assert url.username == "citylake_reader", f"{key}: read with the read-only account"
    seed = " ".join(_command(_compose()["services"]["source-seed"]))
    assert "seed-sources" in seed and "--reader citylake_reader" in seed


@pytest.mark.parametrize("text, names", [
    ("a ${A} $B $$C ${D:-x} ${E:?need E} ${F-${G}} $${H}", {"A", "B", "D", "E", "F", "G"}),
    ("postgresql://u:${P:?set P}@h/db", {"P"}),
])
def test_interpolation_names(text: str, names: set[str]) -> None:
    assert interpolated_names(text) == names
    env = dict.fromkeys(names, "v")
    assert "$" not in interpolate(text.replace("$$", ""), env)


INIT_SCRIPTS = [ROOT / "docker" / "postgres" / "10-citylake-databases.sh", ROOT / "docker" / "source-postgres" / "10-reader.sh"]


@pytest.mark.parametrize("script", INIT_SCRIPTS, ids=lambda p: p.parent.name)
def test_init_scripts_keep_passwords_off_psql_command_lines(tmp_path: Path, script: Path) -> None:
    # The script runs with a psql that records its argv and its SQL; `-v name=secret` would show in `ps`.
    stub = tmp_path / "bin" / "psql"
    stub.parent.mkdir()
    stub.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$STUB_OUT.argv"\ncat > "$STUB_OUT.sql"\n', encoding="utf-8")
    stub.chmod(0o755)
    password = "it's \"quoted\" \\ $x; --"  # what a literal pasted into the SQL would break on
    names = re.findall(r"\$\{(\w+_PASSWORD):\?", script.read_text(encoding="utf-8"))
    secrets = {n: f"{password} {n}" for n in names}
    env = {**os.environ, **secrets, "POSTGRES_USER": "postgres", "POSTGRES_DB": "postgres"}
    subprocess.run(["bash", str(script)], check=True, capture_output=True,
                   env={**env, "PATH": f"{stub.parent}:{os.environ['PATH']}", "STUB_OUT": str(tmp_path / "psql")})
    argv = (tmp_path / "psql.argv").read_text(encoding="utf-8")
    sql = (tmp_path / "psql.sql").read_text(encoding="utf-8")
    assert names and not any(password in text for text in (argv, sql))
    getenvs = re.findall(r"^\\getenv (\w+) (\w+)$", sql, re.M)
    assert sorted(name for _, name in getenvs) == sorted(names)
    assert set(re.findall(r":'(\w+)'", sql)) == {var for var, _ in getenvs}
    # A real psql (the test server) sets each variable from the environment exactly, quotes and all.
    probe = "".join(f"\\getenv {var} {name}\nSELECT :'{var}';\n" for var, name in getenvs)
    out = subprocess.run(["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres",
                          "-d", "postgres"], input=probe, capture_output=True, text=True, env=env, check=True)
    assert out.stdout.splitlines() == [secrets[name] for _, name in getenvs]
