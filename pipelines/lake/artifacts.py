"""Files every worker must see, under one root (``settings.artifacts``): GX validation results, GX Data Docs
and the governance report.

Under the CeleryExecutor each task may run on another machine, so what one task writes to its local lake
folder another cannot read. Each writer keeps its local file (GX and the site builder work on local disk) and
puts a copy here; a reader gets what it lacks from here first. Layout under the root:

- ``gx/validations/<dataset>/<run>__<run time>.json``: one GX validation result per (dataset, run id,
  attempt), put by the gate when written and never rewritten (``result_name``): a rerun of the run id is
  another object, the Data Docs build keeps the newest run time per run, so a reader only ever fetches what
  it lacks and no clock decides anything;
- ``gx/data_docs/``: the GX Data Docs site (pages rendered by this build, or missing or of another size
  there, so an unchanged page is not sent again; ``index.html`` last);
- ``report/``: the governance site (every file; ``index.html`` last; then the files this build lacks that
  were there when it started are deleted, never one a concurrent build put after that).

The root is a local path or ``s3://bucket/prefix`` (pyarrow's filesystems, the S3 one with the endpoint
and credentials the warehouse uses: ``pipelines.lake.s3``). When it is the lake folder itself (the
embedded default) ``open_artifacts`` returns None and callers copy nothing.

Each file is written whole: on S3 an object appears only when its upload completes; locally it is written
to a temporary name beside it and renamed. Nothing here is atomic across files: readers that need one
entry point (a browser opening ``index.html``) get it last.
"""

from __future__ import annotations

import mimetypes
import posixpath
import re
import uuid
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from pipelines.errors import CitylakeError
from pipelines.settings import Settings

VALIDATIONS = "gx/validations"
DATA_DOCS = "gx/data_docs"
REPORT = "report"
INDEX = "index.html"


@dataclass(frozen=True)
class Artifacts:
    """The artifacts root on its filesystem: ``root`` is a pyarrow path (``bucket/prefix`` or a local path)."""

    fs: Any
    root: str
    url: str
    local: bool
    settings: Settings

    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel) if rel else self.root

    def where(self, rel: str) -> str:
        """The location of ``rel`` as users write it (for messages)."""
        return posixpath.join(self.url, rel)


def open_artifacts(settings: Settings) -> Artifacts | None:
    """The artifacts root, or None when it is the lake folder (everything is there already)."""
    location = settings.artifacts
    if location.startswith("s3://"):
        from pipelines.lake.s3 import s3_filesystem, split_s3

        bucket, prefix = split_s3(location)
        root = posixpath.join(bucket, prefix.strip("/")) if prefix.strip("/") else bucket
        return Artifacts(s3_filesystem(settings, bucket), root, f"s3://{root}", local=False, settings=settings)
    if "://" in location and not location.startswith("file://"):
        raise CitylakeError(f"CITYLAKE_ARTIFACTS_DIR {location!r}: expected a local folder or s3://bucket/prefix")
    path = Path(unquote(location.removeprefix("file://")) if location.startswith("file://") else location)
    path = path.expanduser().resolve()
    if path == settings.lake_dir.resolve():
        return None
    from pyarrow import fs

    return Artifacts(fs.LocalFileSystem(), path.as_posix(), path.as_posix(), local=True, settings=settings)


def _content_type(name: str) -> str:
    kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if kind.startswith("text/") or kind in ("application/javascript", "application/json"):
        kind += "; charset=utf-8"
    return kind


def _failed(what: str, exc: Exception) -> CitylakeError:
    # pyarrow's and botocore's messages name the path or key and the S3 error, never the credentials
    return CitylakeError(f"artifacts: cannot {what}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")


def result_name(run_id: str, run_time: datetime) -> str:
    """The file name of one validation result attempt: ``<run id>__<run time, UTC to the microsecond>.json``
    (the run id with anything but ``[A-Za-z0-9_.-]`` as ``_``). Unique per attempt, so a stored result is
    never replaced: a rerun of the run id on any worker writes another name."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)
    return f"{safe}__{run_time.astimezone(UTC).strftime('%Y%m%dT%H%M%S%fZ')}.json"


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``path`` through a temporary name beside it and a rename: a reader (a Data Docs build on this
    machine) sees no file or the whole file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        temp.write_bytes(data)
        temp.replace(path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def put_file(store: Artifacts, local: Path, rel: str) -> None:
    """Copy ``local`` to ``<root>/<rel>``, replacing what is there, whole or not at all."""
    target = store.path(rel)
    try:
        if store.local:
            store.fs.create_dir(posixpath.dirname(target), recursive=True)
            temp = posixpath.join(posixpath.dirname(target), f".{posixpath.basename(target)}.tmp-{uuid.uuid4().hex}")
            try:
                store.fs.copy_file(local.as_posix(), temp)
                store.fs.move(temp, target)  # rename: readers see the old file or the new one
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise
        else:
            with local.open("rb") as src, store.fs.open_output_stream(
                    target, metadata={"Content-Type": _content_type(local.name)}) as out:
                while chunk := src.read(8 << 20):
                    out.write(chunk)
    except OSError as exc:
        raise _failed(f"write {store.where(rel)}", exc) from exc


def listing(store: Artifacts, rel: str) -> dict[str, tuple[int, float]]:
    """Files under ``<root>/<rel>`` (recursively): path relative to it → (bytes, modified as a POSIX time).
    Empty when the folder does not exist."""
    from pyarrow import fs

    base = store.path(rel)
    try:
        infos = store.fs.get_file_info(fs.FileSelector(base, recursive=True, allow_not_found=True))
    except OSError as exc:
        raise _failed(f"list {store.where(rel)}", exc) from exc
    return {posixpath.relpath(i.path, base): (i.size, i.mtime.timestamp() if i.mtime else 0.0)
            for i in infos if i.type == fs.FileType.File and ".tmp-" not in posixpath.basename(i.path)}


def _index_last(names: Iterable[str]) -> list[str]:
    return sorted(names, key=lambda n: (n == INDEX, n))


def put_folder(store: Artifacts, folder: Path, rel: str, *, changed: Collection[str] | None = None,
               delete: bool = False, there: Mapping[str, tuple[int, float]] | None = None,
               skip: Iterable[str] = ()) -> int:
    """Copy the files of ``folder`` under ``<root>/<rel>``, the top ``index.html`` last. ``changed`` (paths
    relative to ``folder`` that the caller's build wrote): only those, or files missing there, or of another
    size there (a folder that grows by new pages each build: what was not rebuilt is not sent again); None:
    every file.
    ``delete``: then remove files there that ``folder`` does not have (a site whose pages may go).
    ``there``: the ``listing`` of ``<rel>`` the caller took (else it is listed now, once): with ``delete``,
    only files in it can be deleted, so a caller that lists when its build starts never deletes what a
    concurrent build put after that (its own index may link them). ``skip``: files not to send (just fetched
    from there). Returns the files copied."""
    if there is None:
        there = listing(store, rel) if changed is not None or delete else {}
    skipped = set(skip)
    here = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    sent = 0
    for name in _index_last(here):
        path = here[name]
        if name in skipped and name in there:
            continue
        if changed is not None and name in there and name not in changed \
                and there[name][0] == path.stat().st_size:
            continue
        put_file(store, path, posixpath.join(rel, name))
        sent += 1
    if delete:
        _delete(store, rel, [name for name in there if name not in here])
    return sent


def _delete(store: Artifacts, rel: str, stale: list[str]) -> None:
    """Delete ``stale`` files under ``<root>/<rel>``. On S3 through boto3 (pyarrow's delete leaves an empty
    ``folder/`` marker object behind, checked); locally also the folders this leaves empty."""
    if not stale:
        return
    base = store.path(rel)
    if store.local:
        for name in stale:
            path = Path(base, name)
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise _failed(f"delete {store.where(posixpath.join(rel, name))}", exc) from exc
            for parent in path.parents:
                if parent == Path(base):
                    break
                try:  # a concurrent put may have added a file here, or a concurrent delete removed the folder
                    if any(parent.iterdir()):
                        break
                    parent.rmdir()
                except OSError:
                    break
        return
    from botocore.exceptions import BotoCoreError, ClientError

    from pipelines.lake.s3 import s3_client

    bucket, _, prefix = base.partition("/")
    keys = [{"Key": posixpath.join(prefix, name)} for name in stale]
    s3 = s3_client(store.settings)
    for i in range(0, len(keys), 1000):
        try:
            errors = s3.delete_objects(Bucket=bucket, Delete={"Objects": keys[i:i + 1000], "Quiet": True}).get("Errors")
        except (BotoCoreError, ClientError) as exc:
            raise _failed(f"delete under {store.where(rel)}", exc) from exc
        if errors:
            raise CitylakeError(f"artifacts: cannot delete {store.where(rel)}/{errors[0].get('Key', '')}: "
                                f"{errors[0].get('Code', 'error')}")


def get_folder(store: Artifacts, rel: str, folder: Path) -> int:
    """Copy into ``folder`` the files under ``<root>/<rel>`` that it lacks (written there once, never
    rewritten: ``result_name``; so no size or clock is compared, and a file this machine wrote under the same
    name is never replaced). Each copy is written to a temporary name and renamed. Returns the files fetched."""
    return get_files(store, rel, listing(store, rel), folder)


def get_files(store: Artifacts, rel: str, names: Iterable[str], folder: Path) -> int:
    """Copy ``<root>/<rel>/<name>`` to ``folder/<name>`` for each of ``names`` that ``folder`` lacks (temporary
    name, then rename). Returns the files fetched."""
    fetched = 0
    for name in sorted(names):
        path = folder / name
        if path.is_file():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
        try:
            with store.fs.open_input_stream(store.path(posixpath.join(rel, name))) as src, temp.open("wb") as out:
                while chunk := src.read(8 << 20):
                    out.write(chunk)
            temp.replace(path)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise _failed(f"read {store.where(posixpath.join(rel, name))}", exc) from exc
        fetched += 1
    return fetched


def exists(store: Artifacts, rel: str) -> bool:
    from pyarrow import fs

    try:
        return bool(store.fs.get_file_info(store.path(rel)).type == fs.FileType.File)
    except OSError as exc:
        raise _failed(f"read {store.where(rel)}", exc) from exc
