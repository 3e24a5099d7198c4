"""Faults during a load (issue 8): after each, the lake holds exactly the source (nothing lost, nothing
doubled) and a rerun of the same interval completes. The catalog's PostgreSQL behind a TCP proxy that drops
the connection, the S3 endpoint (moto's server) stopped, SIGKILL between the data files and the commit."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pyarrow.compute as pc
import pytest
import sqlalchemy.exc
from pyiceberg.catalog.sql import SqlCatalog

from pipelines.errors import CommitStateUnknown
from pipelines.ingest import ingest_table
from pipelines.lake.catalog import get_catalog
from pipelines.lake.raw import RawWriter
from pipelines.settings import Settings, load_settings
from tests.test_commit_safety import AT, _staff, adds_snapshot
from tests.test_ingest_semantics import _system


def _exactly_source(settings: Settings, n: int) -> None:
    """Reconciliation: the lake has each source row once (a fresh catalog reads every data file)."""
    ids = get_catalog(settings).load_table("raw.hr__staff").scan(selected_fields=("id",)).to_arrow().column("id")
    assert len(ids) == n and pc.count_distinct(ids).as_py() == n


def _data_files(settings: Settings, prefix: str) -> set[str]:
    location = get_catalog(settings).load_table("raw.hr__staff").location().removeprefix("file://")
    return {p.name for p in (Path(location) / "data").glob(f"{prefix}-*.parquet")}


# --- the PostgreSQL catalog unreachable ----------------------------------------------------------


class _Proxy:
    """A TCP proxy in front of PostgreSQL; ``cut()`` drops every connection and refuses new ones.

    ``arm()`` loses the answer to a commit instead: once a client has sent an ``UPDATE iceberg_tables``
    (pyiceberg's compare-and-swap) and then ``COMMIT``, the server's reply to the COMMIT is swallowed, so the
    server has committed when the proxy cuts every connection: the outcome is unknown to the client."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open: list[socket.socket] = []
        self.down = False
        self.armed = False
        self.committed = threading.Event()  # a COMMIT after the UPDATE went to the server
        self.lost = threading.Event()  # its reply was swallowed and every connection cut
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.down:
                client.close()
                continue
            server = socket.create_connection(self.target)
            self.open += [client, server]
            updated = {"sent": False}
            threading.Thread(target=self._pipe, args=(client, server, updated, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, updated, False), daemon=True).start()

    def arm(self) -> None:
        self.armed = True

    def _pipe(self, src: socket.socket, dst: socket.socket, updated: dict[str, bool], upstream: bool) -> None:
        try:
            while data := src.recv(65536):
                if self.armed and upstream:
                    updated["sent"] = updated["sent"] or b"UPDATE iceberg_tables" in data
                    if updated["sent"] and b"COMMIT" in data:
                        self.committed.set()
                elif self.armed and not upstream and self.committed.is_set() and updated["sent"]:
                    # the server answered the COMMIT: it has committed; the client never hears it (marked
                    # before the cut: the client's error, and the test's check, follow the cut at once)
                    self.lost.set()
                    self.cut()
                    return
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self.down = True
        for s in self.open:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.open = []

    def close(self) -> None:
        self.cut()
        self.listener.close()


@pytest.fixture
def proxied(lake_settings: Settings, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Settings, _Proxy]]:
    proxy = _Proxy(5432)
    monkeypatch.setenv("CITYLAKE_CATALOG_URI", pg_url.replace(":5432/", f":{proxy.port}/"))
    try:
        yield load_settings(), proxy
    finally:
        proxy.close()


@pytest.mark.parametrize("when", ["before_commit", "at_commit"])
def test_catalog_connection_dropped(when: str, tmp_path: Path, proxied: tuple[Settings, _Proxy], pg_url: str,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    settings, proxy = proxied
    db = tmp_path / "hr.db"
    _staff(db, 0, 30, 1)
    system = _system(db)
    ingest_table(system, "staff", settings=settings, batch_id="b1", extracted_at=AT)
    _staff(db, 30, 50, 2)
    if when == "before_commit":  # the files are written, then the catalog goes away
        real = RawWriter.commit

        def commit(self: RawWriter, *args: Any, **kwargs: Any) -> Any:
            self._finish()
            proxy.cut()
            return real(self, *args, **kwargs)

        patch: tuple[Any, str, Any] = (RawWriter, "commit", commit)
        raised: Any = sqlalchemy.exc.OperationalError  # the writer could not reach the catalog
    else:  # PostgreSQL commits the load, then the connection drops before its answer: outcome unknown
        real_commit = SqlCatalog.commit_table

        def commit_table(self: SqlCatalog, *args: Any, **kwargs: Any) -> Any:
            if adds_snapshot(args[2]):  # the load's commit, not the load-sequence one at extract start
                proxy.arm()
            return real_commit(self, *args, **kwargs)

        patch = (SqlCatalog, "commit_table", commit_table)
        raised = CommitStateUnknown  # the writer cannot look its commit up: the catalog is unreachable
    with monkeypatch.context() as m, pytest.raises(raised):
        m.setattr(*patch)
        ingest_table(system, "staff", settings=settings, batch_id="b2", extracted_at=AT + timedelta(1))
    assert proxy.lost.is_set() == (when == "at_commit")  # the COMMIT really reached the server

    monkeypatch.setenv("CITYLAKE_CATALOG_URI", pg_url)
    direct = load_settings()  # the catalog reached without the proxy
    # before_commit: nothing of b2 landed; at_commit: b2 landed and its files were kept. Nothing of b1 lost.
    _exactly_source(direct, 30 if when == "before_commit" else 50)
    # A commit refused before it was sent removes its files; an unknown one leaves them to orphan cleanup.
    assert bool(_data_files(direct, "b2")) == (when == "at_commit")
    ingest_table(system, "staff", settings=direct, batch_id="b2", extracted_at=AT + timedelta(1))
    _exactly_source(direct, 50)


# --- the S3 endpoint stopped -------------------------------------------------------------------------


def test_s3_endpoint_stopped_mid_load(tmp_path: Path, aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="lake")
    monkeypatch.setenv("CITYLAKE_LAKE_DIR", str(tmp_path / "lake"))
    monkeypatch.setenv("CITYLAKE_WAREHOUSE", "s3://lake/warehouse")
    monkeypatch.setenv("CITYLAKE_S3_ENDPOINT", endpoint)
    settings = load_settings()
    db = tmp_path / "hr.db"
    _staff(db, 0, 30, 1)
    system = _system(db)
    try:
        ingest_table(system, "staff", settings=settings, batch_id="b1", extracted_at=AT)
        _staff(db, 30, 50, 2)
        real = RawWriter.commit

        def commit(self: RawWriter, *args: Any, **kwargs: Any) -> Any:
            server.stop()  # the rows are streamed; their files cannot be closed or registered
            return real(self, *args, **kwargs)

        with monkeypatch.context() as m:
            m.setattr(RawWriter, "commit", commit)
            with pytest.raises(OSError):
                ingest_table(system, "staff", settings=settings, batch_id="b2", extracted_at=AT + timedelta(1))
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)  # same process: same buckets
        server.start()
        _exactly_source(settings, 30)
        ingest_table(system, "staff", settings=settings, batch_id="b2", extracted_at=AT + timedelta(1))
        _exactly_source(settings, 50)
    finally:
        server.stop()


# --- SIGKILL between the data files and the commit ------------------------------------------------

_KILLED_AT_COMMIT = """\
import os, signal, sys
from datetime import timedelta
from pathlib import Path
from pipelines.ingest import ingest_table
from pipelines.lake.raw import RawWriter
from tests.test_commit_safety import AT
from tests.test_ingest_semantics import _system

def commit(self, *args, **kwargs):
    self._finish()  # every data file written and closed
    os.kill(os.getpid(), signal.SIGKILL)

RawWriter.commit = commit
ingest_table(_system(Path(sys.argv[1])), "staff", batch_id="b2", extracted_at=AT + timedelta(1))
"""


def test_sigkill_between_data_files_and_commit(lake_settings: Settings, tmp_path: Path) -> None:
    db = tmp_path / "hr.db"
    _staff(db, 0, 30, 1)
    system = _system(db)
    ingest_table(system, "staff", settings=lake_settings, batch_id="b1", extracted_at=AT)
    before = get_catalog(lake_settings).load_table("raw.hr__staff").current_snapshot().snapshot_id
    _staff(db, 30, 50, 2)

    # The test modules it imports read shared constants with ``from conftest import``, as pytest allows:
    # the child needs tests/ on its path as pytest's rootdir insertion gives the parent.
    path = os.pathsep.join(p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p)
    killed = subprocess.run([sys.executable, "-c", _KILLED_AT_COMMIT, str(db)], env={**os.environ, "PYTHONPATH": path},
                            capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert _data_files(lake_settings, "b2"), "the kill came before the data files were written"
    assert get_catalog(lake_settings).load_table("raw.hr__staff").current_snapshot().snapshot_id == before
    _exactly_source(lake_settings, 30)

    ingest_table(system, "staff", settings=lake_settings, batch_id="b2", extracted_at=AT + timedelta(1))
    _exactly_source(lake_settings, 50)
