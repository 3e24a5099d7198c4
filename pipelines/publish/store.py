"""Where the open release lives: a local folder or an S3 prefix, behind one small interface.

- Local: a dataset folder is written in a staging folder beside its target (``open/<d>/.stage-<ds>-…``,
  a dot name the portal never lists) and renamed into place; a same-day rerun swaps the two folders in one
  ``renameat2(RENAME_EXCHANGE)`` (Linux), so a reader sees the old folder or the new one, never none, and the
  old one comes back if the new one does not verify. A pointer or catalog file is written to a temp file,
  fsynced and ``os.replace``d.
- S3: staged on local disk, uploaded (data files first, ``manifest.json`` last), then listed and every
  object's size and ETag compared with what was staged (the ETag of a fixed 8 MB multipart layout,
  computed locally); a pointer or catalog file is one PUT, which S3 makes visible whole.

A release holds the store's lock (``fcntl.flock`` on a local file) from start to end, so two releases on
one machine (the DAG and a CLI run) take turns; leftovers of a killed run (staging folders, temp files)
are swept by the next one.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from pipelines.errors import CitylakeError
from pipelines.publish.writers import sha256_file

STAGE_PREFIX = ".stage-"
OLD_PREFIX = ".old-"
TMP_PREFIX = ".tmp-"
PART_SIZE = 8 * 1024 * 1024
"""S3 multipart threshold and part size of every upload: fixed, so the ETag is known before the upload."""
CONTENT_TYPES = {".csv": "text/csv; charset=utf-8", ".jsonl": "application/jsonl; charset=utf-8",
                 ".json": "application/json; charset=utf-8", ".jsonld": "application/ld+json; charset=utf-8",
                 ".parquet": "application/vnd.apache.parquet", ".md": "text/markdown; charset=utf-8"}


class ReleaseStoreError(CitylakeError):
    """A release folder did not verify where it was placed (size, checksum or ETag differs, a file missing)."""


Expected = dict[str, tuple[int, str]]
"""File name → (bytes, sha256) of a staged release folder."""


class Store(Protocol):
    location: str

    def lock(self) -> contextlib.AbstractContextManager[None]: ...
    def sweep(self) -> None: ...
    def stage(self, release_date: str, dataset: str) -> Path: ...
    def place(self, stage: Path, folder: str, expected: Expected) -> None: ...
    def exists(self, rel: str) -> bool: ...
    def read_bytes(self, rel: str) -> bytes | None: ...
    def write_atomic(self, rel: str, data: bytes) -> None: ...
    def local_copy(self, rel: str, scratch: Path) -> Path | None: ...
    def release_dates(self) -> list[str]: ...
    def folders(self, release_date: str) -> list[str]: ...
    def delete(self, rel: str) -> None: ...
    def url(self, rel: str) -> str: ...


def open_store(exports: str, *, s3_endpoint: str | None = None, scratch: Path | None = None) -> Store:
    """The store of ``exports``: ``s3://bucket/prefix`` or a local folder."""
    if exports.startswith("s3://"):
        return S3Store(exports, s3_endpoint=s3_endpoint, scratch=scratch)
    if "://" in exports and not exports.startswith("file://"):
        raise CitylakeError(f"exports {exports!r}: a local folder or s3://bucket/prefix (CITYLAKE_EXPORTS_DIR)")
    return LocalStore(Path(exports.removeprefix("file://")))


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """fsync every file of ``folder`` and the folder itself (its entries), before it is renamed into place: the
    data files' writers fsync on close; the metadata files are written plainly, and this is where that ends."""
    for p in folder.iterdir():
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(folder)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2`` with ``RENAME_EXCHANGE``); False where it is missing."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # kernel or filesystem without it
        return False
    raise OSError(code, os.strerror(code), str(a))


def verify_folder(folder: Path, expected: Expected) -> None:
    """Re-hash every file of ``folder`` against ``expected`` (threads: hashlib releases the GIL)."""
    present = {p.name for p in folder.iterdir() if p.is_file()} if folder.is_dir() else set()
    problems = [f"{name}: missing" for name in sorted(set(expected) - present)]
    problems += [f"{name}: not in the release" for name in sorted(present - set(expected))]

    def check(name: str) -> str | None:
        size, sha = expected[name]
        path = folder / name
        if path.stat().st_size != size:
            return f"{name}: {path.stat().st_size} bytes, expected {size}"
        return None if sha256_file(path) == sha else f"{name}: SHA-256 differs"

    with ThreadPoolExecutor(max_workers=2) as pool:
        problems += [p for p in pool.map(check, sorted(set(expected) & present)) if p]
    if problems:
        raise ReleaseStoreError(f"{folder}: does not verify: {'; '.join(problems)}")


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)

    def lock(self) -> contextlib.AbstractContextManager[None]:
        return _flock(self.root / "open" / ".release.lock")

    def sweep(self) -> None:
        """Remove what a killed release left (staging folders, swapped-out folders, temp files)."""
        base = self.root / "open"
        if not base.is_dir():
            return
        for parent in [base, *(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))]:
            for p in parent.iterdir():
                if p.name.startswith((STAGE_PREFIX, OLD_PREFIX, TMP_PREFIX)):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    def stage(self, release_date: str, dataset: str) -> Path:
        parent = self.root / "open" / release_date
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{dataset}-", dir=parent))

    def place(self, stage: Path, folder: str, expected: Expected) -> None:
        """Rename ``stage`` to ``folder`` (swapping with a folder of the same day), then re-hash it in place;
        a folder that does not verify is taken out again (the swapped-out one put back)."""
        target = self.root / folder.rstrip("/")
        _fsync_tree(stage)
        swapped = None
        if target.exists():
            if _exchange(stage, target):
                swapped = stage  # now holds the earlier folder
            else:
                swapped = target.with_name(f"{OLD_PREFIX}{target.name}-{uuid.uuid4().hex[:8]}")
                target.rename(swapped)
                stage.rename(target)
        else:
            stage.rename(target)
        _fsync_dir(target.parent)
        try:
            verify_folder(target, expected)
        except BaseException:
            if swapped is not None and not _exchange(swapped, target):
                shutil.rmtree(target, ignore_errors=True)
                swapped.rename(target)
            elif swapped is None:
                shutil.rmtree(target, ignore_errors=True)
            raise
        finally:
            if swapped is not None:
                shutil.rmtree(swapped, ignore_errors=True)

    def exists(self, rel: str) -> bool:
        return (self.root / rel).exists()

    def read_bytes(self, rel: str) -> bytes | None:
        path = self.root / rel
        return path.read_bytes() if path.is_file() else None

    def write_atomic(self, rel: str, data: bytes) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)

    def local_copy(self, rel: str, scratch: Path) -> Path | None:
        path = self.root / rel
        return path if path.is_file() else None

    def release_dates(self) -> list[str]:
        base = self.root / "open"
        return sorted(p.name for p in base.iterdir() if p.is_dir() and _is_date(p.name)) if base.is_dir() else []

    def folders(self, release_date: str) -> list[str]:
        base = self.root / "open" / release_date
        return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if base.is_dir() else []

    def delete(self, rel: str) -> None:
        path = self.root / rel.rstrip("/")
        if path.is_dir():
            # renamed away first: a half-deleted folder is never visible under its own name
            gone = path.with_name(f"{OLD_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
            path.rename(gone)
            shutil.rmtree(gone, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def url(self, rel: str) -> str:
        return str(self.root / rel)


def _is_date(name: str) -> bool:
    from datetime import date

    try:
        return len(name) == 10 and date.fromisoformat(name).isoformat() == name
    except ValueError:
        return False


def s3_etag(path: Path) -> str:
    """The ETag S3 gives ``path`` uploaded with ``PART_SIZE`` parts: the bytes' MD5 below the threshold, else
    the MD5 of the parts' MD5s and ``-<parts>``."""
    size = path.stat().st_size
    with path.open("rb") as f:
        if size < PART_SIZE:
            return hashlib.md5(f.read(), usedforsecurity=False).hexdigest()
        parts = []
        while block := f.read(PART_SIZE):
            parts.append(hashlib.md5(block, usedforsecurity=False).digest())
    return f"{hashlib.md5(b''.join(parts), usedforsecurity=False).hexdigest()}-{len(parts)}"


class S3Store:
    def __init__(self, exports: str, *, s3_endpoint: str | None = None, scratch: Path | None = None) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig

        self.bucket, _, prefix = exports.removeprefix("s3://").partition("/")
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = boto3.client("s3", endpoint_url=s3_endpoint) if s3_endpoint else boto3.client("s3")
        self.transfer = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE)
        self.location = f"s3://{self.bucket}/{self.prefix}"
        self.scratch = scratch or Path(tempfile.gettempdir()) / "citylake-open"

    def key(self, rel: str) -> str:
        return self.prefix + rel

    def lock(self) -> contextlib.AbstractContextManager[None]:
        name = hashlib.sha256(self.location.encode()).hexdigest()[:16]
        return _flock(self.scratch / f".release-{name}.lock")

    def sweep(self) -> None:
        if self.scratch.is_dir():
            for p in self.scratch.iterdir():
                if p.is_dir() and p.name.startswith(STAGE_PREFIX):
                    shutil.rmtree(p, ignore_errors=True)

    def stage(self, release_date: str, dataset: str) -> Path:
        self.scratch.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{release_date}-{dataset}-", dir=self.scratch))

    def _listing(self, prefix: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            out.update({o["Key"]: o for o in page.get("Contents", [])})
        return out

    def place(self, stage: Path, folder: str, expected: Expected) -> None:
        """Upload the staged folder (manifest last), remove objects a same-day earlier folder had and this one
        does not, then list the prefix and compare every object's size and ETag with the staged file."""
        prefix = self.key(folder.rstrip("/") + "/")
        names = sorted(expected, key=lambda n: (n == "manifest.json", n))
        etags = {n: s3_etag(stage / n) for n in names}
        try:
            for name in names:
                kind = CONTENT_TYPES.get(Path(name).suffix, "application/octet-stream")
                self.client.upload_file(str(stage / name), self.bucket, prefix + name,
                                        ExtraArgs={"ContentType": kind}, Config=self.transfer)
            listed = self._listing(prefix)
            stale = [{"Key": k} for k in listed if k[len(prefix):] not in expected]
            for i in range(0, len(stale), 1000):
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": stale[i:i + 1000]})
            problems = []
            for name in names:
                obj = listed.get(prefix + name)
                if obj is None:
                    problems.append(f"{name}: missing")
                elif int(obj["Size"]) != expected[name][0]:
                    problems.append(f"{name}: {obj['Size']} bytes, expected {expected[name][0]}")
                elif str(obj["ETag"]).strip('"') != etags[name]:
                    problems.append(f"{name}: ETag differs")
            if problems:
                raise ReleaseStoreError(f"{self.location}{folder}: does not verify: {'; '.join(problems)}")
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def exists(self, rel: str) -> bool:
        return self.read_head(rel) is not None

    def read_head(self, rel: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=self.key(rel)))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def read_bytes(self, rel: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=self.key(rel))["Body"].read())
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def write_atomic(self, rel: str, data: bytes) -> None:
        kind = CONTENT_TYPES.get(Path(rel).suffix, "application/octet-stream")
        self.client.put_object(Bucket=self.bucket, Key=self.key(rel), Body=data, ContentType=kind)

    def local_copy(self, rel: str, scratch: Path) -> Path | None:
        if not self.exists(rel):
            return None
        target = scratch / Path(rel).name
        self.client.download_file(self.bucket, self.key(rel), str(target), Config=self.transfer)
        return target

    def _children(self, prefix: str) -> list[str]:
        out = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix,
                                                                          Delimiter="/"):
            out += [p["Prefix"][len(prefix):].rstrip("/") for p in page.get("CommonPrefixes", [])]
        return sorted(out)

    def release_dates(self) -> list[str]:
        return [d for d in self._children(self.key("open/")) if _is_date(d)]

    def folders(self, release_date: str) -> list[str]:
        return [d for d in self._children(self.key(f"open/{release_date}/")) if not d.startswith(".")]

    def delete(self, rel: str) -> None:
        keys = [{"Key": k} for k in self._listing(self.key(rel.rstrip("/") + "/"))] if rel.endswith("/") else \
            [{"Key": self.key(rel)}]
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys[i:i + 1000]})

    def url(self, rel: str) -> str:
        return f"{self.location}{rel}"
