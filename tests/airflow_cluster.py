"""A native Airflow 3.3 deployment for tests: the same processes and shared settings docker-compose runs
(api-server, scheduler, dag-processor, Celery workers), each in its own process group with its own log file,
plus a small REST client (JWT from ``POST /auth/token``).

Hand-written: no library starts Airflow's components as separate processes for a test (Airflow's own
``airflow standalone`` runs them inside one process tree with a LocalExecutor and generated secrets).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
CITYLAKE = str(Path(sys.executable).with_name("citylake"))
SECRET_ENV = ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY", "AWS_SECRET_ACCESS_KEY",
              "CITYLAKE_SHARE_MASTER_KEY")


def airflow_env(tmp: Path, metadata: str, api_port: int, password_file: Path, executor: str) -> dict[str, str]:
    """What every component of a native test cluster shares (what docker-compose sets once for all): this
    process's environment without its AIRFLOW*/CITYLAKE_* settings, the metadata DB (psycopg 3 for the async
    engine too: Airflow would map postgresql to asyncpg, not installed), fresh Fernet/JWT/API secrets, the
    execution API on ``api_port``, SimpleAuthManager admin/admin, and fast scheduler and parsing loops."""
    import secrets

    from cryptography.fernet import Fernet

    from pipelines.settings import PROJECT_ROOT

    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CITYLAKE_"))}
    return {
        **base,
        "AIRFLOW_HOME": str(tmp / "airflow_home"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DEFAULT_TIMEZONE": "Asia/Shanghai",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__CORE__EXECUTOR": executor,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": metadata,
        "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}/",  # compose: ${AIRFLOW_BASE_URL}, the same form
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(password_file),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
        "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "2",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "CITYLAKE_ROOT": str(PROJECT_ROOT),
        "CITYLAKE_RETRY_DELAY_SECONDS": "0.2",
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path


@dataclass
class AirflowCluster:
    """Processes sharing one environment; ``stop`` ends every process group it started."""

    env: dict[str, str]
    logs: Path
    api_port: int
    user: str
    password: str
    processes: list[Process] = field(default_factory=list)
    _token: str | None = None

    def run(self, name: str, command: str, timeout: float = 300) -> None:
        """A one-shot command (bash -c, so ``a && b`` is run exactly as compose runs it); raises with the log tail."""
        log = self.logs / f"{name}.log"
        with log.open("wb") as out:
            done = subprocess.run(["bash", "-c", command], env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=timeout, start_new_session=True)
        if done.returncode != 0:
            raise AssertionError(f"{name} exited {done.returncode}:\n{self.tail(log)}")

    def start(self, name: str, argv: list[str], extra_env: dict[str, str] | None = None) -> None:
        log = self.logs / f"{name}.log"
        out = log.open("wb")
        popen = subprocess.Popen(argv, env={**self.env, **(extra_env or {})}, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True, cwd=self.logs)
        out.close()
        self.processes.append(Process(name, popen, log))

    def check_alive(self) -> None:
        for p in self.processes:
            if p.popen.poll() is not None:
                raise AssertionError(f"{p.name} exited {p.popen.returncode}:\n{self.tail(p.log)}")

    def stop(self, grace: float = 15) -> None:
        """SIGTERM every process group, then SIGKILL what is left after ``grace`` seconds."""
        for p in self.processes:
            if p.popen.poll() is None:
                try:
                    os.killpg(p.popen.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        for p in self.processes:
            try:
                p.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:  # the group too: a worker's task supervisors and forked children
                os.killpg(p.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if p.popen.poll() is None:
                p.popen.wait(timeout=10)

    def tail(self, log: Path, lines: int = 40) -> str:
        text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else "(no log)"
        for var in SECRET_ENV:  # no secret in what a failing test prints
            if self.env.get(var):
                text = text.replace(self.env[var], "***")
        if self.password:
            text = text.replace(self.password, "***")
        return "\n".join(text.splitlines()[-lines:])

    def tails(self) -> str:
        return "\n".join(f"----- {p.log.name} (last lines) -----\n{self.tail(p.log)}" for p in self.processes)

    # --- REST API -------------------------------------------------------------------------------------
    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def token(self) -> str:
        if self._token is None:
            answer = httpx.post(f"{self.base}/auth/token", json={"username": self.user, "password": self.password},
                                timeout=30)
            answer.raise_for_status()
            self._token = answer.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{self.base}/api/v2{path}", headers={"Authorization": f"Bearer {self.token()}"},
                             timeout=30, **kwargs)

    def wait_for(self, what: str, probe: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
        """Poll ``probe`` until it returns something truthy; raise with every log's tail on timeout."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                last = probe()
            except (httpx.HTTPError, OSError) as exc:
                last = exc
            else:
                if last:
                    return last
            time.sleep(every)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})\n{self.tails()}")
