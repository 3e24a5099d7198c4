"""Where the open release lives: a local folder or an S3 prefix, behind one small interface.

Release folders are immutable: ``place`` refuses a folder that exists (the release picks a new name for a
same-day rebuild), so a folder a pointer names is never rewritten; retention removes superseded ones.

- Local: a dataset folder is written in a staging folder beside its target (``open/<d>/.stage-<ds>-…``,
  a dot name the portal never lists), every file and the folder fsynced, renamed into place and re-hashed
  there. A pointer or catalog file is written to a temp file, fsynced and ``os.replace``d.
- S3: staged on local disk; a marker object ``.incomplete`` is created first (``If-None-Match: *``: two
  writers never share a prefix), the files uploaded with ``ChecksumAlgorithm=SHA256`` (data files first,
  ``manifest.json`` last), verified, and the marker deleted last. Any exception deletes the whole prefix;
  a folder whose marker is left (a killed upload) is not listed by ``folders`` (so never catalogued) and is
  deleted by ``sweep`` once its marker is an hour old. Verification: each object's size from the listing,
  and its SHA-256 checksum from ``head_object(ChecksumMode="ENABLED")`` compared with the staged file's
  (which is first re-hashed against the manifest's SHA-256; a multipart object's checksum is the SHA-256 of
  its 8 MB parts' digests); where the endpoint returns no checksum, the ETag (MD5 of the fixed 8 MB part
  layout, computed locally; not valid under SSE-KMS/SSE-C). The pointer is written with a conditional PUT
  (``If-Match`` the ETag read, ``If-None-Match: *`` when creating it): a release on another host that moved
  it in between makes the PUT fail (412) and the pointer's read-modify-write is retried (``pointer``).

A release holds the store's lock (``fcntl.flock`` on a local file) from start to end, so two releases on
one machine (the DAG and a CLI run) take turns; leftovers of a killed run (staging folders, temp files,
incomplete S3 folders) are swept by the next one.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from pipelines.errors import CitylakeError
from pipelines.lake.s3 import s3_client  # the one factory: retries, path style on a custom endpoint
from pipelines.publish.writers import sha256_file

STAGE_PREFIX = ".stage-"
OLD_PREFIX = ".old-"
TMP_PREFIX = ".tmp-"
INCOMPLETE = ".incomplete"
"""Marker object of an S3 folder being uploaded: created first, deleted last."""
STALE_SECONDS = 3600
"""An incomplete S3 folder older than this is a killed upload (``sweep`` deletes it); a younger one may be
another host's upload in progress."""
PART_SIZE = 8 * 1024 * 1024
"""S3 multipart threshold and part size of every upload: fixed, so the ETag is known before the upload."""
CONTENT_TYPES = {".csv": "text/csv; charset=utf-8", ".jsonl": "application/jsonl; charset=utf-8",
                 ".json": "application/json; charset=utf-8", ".jsonld": "application/ld+json; charset=utf-8",
                 ".parquet": "application/vnd.apache.parquet", ".md": "text/markdown; charset=utf-8"}


class ReleaseStoreError(CitylakeError):
    """A release folder did not verify where it was placed (size, checksum or ETag differs, a file missing), or
    its name is taken."""


class Conflict(CitylakeError):
    """A conditional write lost: the object changed since it was read (another release moved the pointer)."""


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
    def read_versioned(self, rel: str) -> tuple[bytes | None, str | None]: ...
    def write_if(self, rel: str, data: bytes, version: str | None) -> None: ...
    def folder_exists(self, folder: str) -> bool: ...
    def local_copy(self, rel: str, scratch: Path) -> Path | None: ...
    def release_dates(self) -> list[str]: ...
    def folders(self, release_date: str) -> list[str]: ...
    def delete(self, rel: str) -> None: ...
    def url(self, rel: str) -> str: ...


def open_store(exports: str, *, s3_endpoint: str | None = None, scratch: Path | None = None,
               base: str = "open") -> Store:
    """The store of ``exports``: ``s3://bucket/prefix`` or a local folder. ``base`` is the folder under it that
    ``lock``, ``sweep``, ``stage``, ``release_dates`` and ``folders`` work in (the open release's ``open``; a
    share delivery's ``share/<consumer>/<dataset>``); the other methods take paths relative to ``exports``."""
    if exports.startswith("s3://"):
        return S3Store(exports, s3_endpoint=s3_endpoint, scratch=scratch, base=base)
    if "://" in exports and not exports.startswith("file://"):
        raise CitylakeError(f"exports {exports!r}: a local folder or s3://bucket/prefix (CITYLAKE_EXPORTS_DIR)")
    return LocalStore(Path(exports.removeprefix("file://")), base=base)


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
    def __init__(self, root: Path, base: str = "open") -> None:
        self.root = root
        self.base = base.strip("/")
        self.location = str(root)

    def lock(self) -> contextlib.AbstractContextManager[None]:
        return _flock(self.root / self.base / ".release.lock")

    def sweep(self) -> None:
        """Remove what a killed release left (staging folders, swapped-out folders, temp files)."""
        base = self.root / self.base
        if not base.is_dir():
            return
        for parent in [base, *(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))]:
            for p in parent.iterdir():
                if p.name.startswith((STAGE_PREFIX, OLD_PREFIX, TMP_PREFIX)):
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    def stage(self, release_date: str, dataset: str) -> Path:
        parent = self.root / self.base / release_date  # "": the stage directly in base
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{dataset}-", dir=parent))

    def place(self, stage: Path, folder: str, expected: Expected) -> None:
        """Rename ``stage`` to ``folder`` (a new name: an existing folder is never replaced), then re-hash it
        in place; a folder that does not verify is removed again (no pointer names it yet)."""
        target = self.root / folder.rstrip("/")
        if target.exists():  # os.rename would silently replace an empty directory
            raise ReleaseStoreError(f"{target}: exists; a release folder is never overwritten")
        # mkdtemp makes the stage 0700: a web server running as another user must read the published folder
        stage.chmod(0o755)
        for path in stage.iterdir():
            path.chmod(0o644)
        _fsync_tree(stage)
        stage.rename(target)
        _fsync_dir(target.parent)
        try:
            verify_folder(target, expected)
        except BaseException:
            self.delete(folder)
            raise

    def folder_exists(self, folder: str) -> bool:
        return (self.root / folder.rstrip("/")).exists()

    def read_versioned(self, rel: str) -> tuple[bytes | None, str | None]:
        return self.read_bytes(rel), None

    def write_if(self, rel: str, data: bytes, version: str | None) -> None:
        """Locally the release lock (flock) already serialises every read-modify-write."""
        self.write_atomic(rel, data)

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
        tmp.chmod(0o644)  # latest.json and catalog.jsonld are read by the portal's web server
        os.replace(tmp, path)
        _fsync_dir(path.parent)

    def local_copy(self, rel: str, scratch: Path) -> Path | None:
        path = self.root / rel
        return path if path.is_file() else None

    def release_dates(self) -> list[str]:
        base = self.root / self.base
        return sorted(p.name for p in base.iterdir() if p.is_dir() and _is_date(p.name)) if base.is_dir() else []

    def folders(self, release_date: str) -> list[str]:
        base = self.root / self.base / release_date
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


def s3_sha256(path: Path) -> tuple[str, str]:
    """(hex SHA-256 of the whole file, base64 S3 checksum of it uploaded with ``PART_SIZE`` parts): below the
    threshold the whole file's digest, else the digest of the parts' digests (S3 appends ``-<parts>``)."""
    size = path.stat().st_size
    whole = hashlib.sha256()
    parts = []
    with path.open("rb") as f:
        while block := f.read(PART_SIZE):
            whole.update(block)
            parts.append(hashlib.sha256(block).digest())
    if size < PART_SIZE:
        return whole.hexdigest(), base64.b64encode(whole.digest()).decode()
    return whole.hexdigest(), base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode()


def _error_code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def s3_etag(path: Path, chunk: int = PART_SIZE) -> str:
    """The ETag S3 gives ``path`` uploaded with ``chunk``-byte parts (``PART_SIZE``, boto3's default multipart
    chunk size): the bytes' MD5 below the threshold, else the MD5 of the parts' MD5s and ``-<parts>``."""
    size = path.stat().st_size
    with path.open("rb") as f:
        if size < chunk:
            return hashlib.md5(f.read(), usedforsecurity=False).hexdigest()
        parts = []
        while block := f.read(chunk):
            parts.append(hashlib.md5(block, usedforsecurity=False).digest())
    return f"{hashlib.md5(b''.join(parts), usedforsecurity=False).hexdigest()}-{len(parts)}"


class S3Store:
    def __init__(self, exports: str, *, s3_endpoint: str | None = None, scratch: Path | None = None,
                 base: str = "open") -> None:
        from boto3.s3.transfer import TransferConfig

        self.base = base.strip("/")
        self.bucket, _, prefix = exports.removeprefix("s3://").partition("/")
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = s3_client(s3_endpoint)
        self.transfer = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE)
        self.location = f"s3://{self.bucket}/{self.prefix}"
        self.scratch = scratch or Path(tempfile.gettempdir()) / "citylake-open"

    def key(self, rel: str) -> str:
        return self.prefix + rel

    def lock(self) -> contextlib.AbstractContextManager[None]:
        # the open release's lock name is unchanged; another base locks apart from it
        scope = self.location if self.base == "open" else f"{self.location}{self.base}/"
        name = hashlib.sha256(scope.encode()).hexdigest()[:16]
        return _flock(self.scratch / f".release-{name}.lock")

    def sweep(self) -> None:
        """Local staging folders, and every S3 folder whose ``.incomplete`` marker is over an hour old (an
        upload killed outright: its ``place`` never got to delete it)."""
        if self.scratch.is_dir():
            for p in self.scratch.iterdir():
                if p.is_dir() and p.name.startswith(STAGE_PREFIX):
                    shutil.rmtree(p, ignore_errors=True)
        now = time.time()
        for key, obj in self._listing(self.key(f"{self.base}/")).items():
            if key.endswith("/" + INCOMPLETE) and now - obj["LastModified"].timestamp() > STALE_SECONDS:
                self._delete_prefix(key[: -len(INCOMPLETE)])

    def stage(self, release_date: str, dataset: str) -> Path:
        self.scratch.mkdir(parents=True, exist_ok=True)
        name = f"{STAGE_PREFIX}{release_date}-{dataset}-".replace("/", "-")
        return Path(tempfile.mkdtemp(prefix=name, dir=self.scratch))

    def _listing(self, prefix: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            out.update({o["Key"]: o for o in page.get("Contents", [])})
        return out

    def place(self, stage: Path, folder: str, expected: Expected) -> None:
        """Claim the new prefix with its ``.incomplete`` marker, upload the staged folder (manifest last),
        verify every object (size; SHA-256 checksum, else ETag), delete the marker. Any exception (a failed
        upload, a verification, an interruption) deletes what was uploaded under the prefix."""
        from botocore.exceptions import ClientError

        prefix = self.key(folder.rstrip("/") + "/")
        names = sorted(expected, key=lambda n: (n == "manifest.json", n))
        claimed = False
        try:
            if self._listing(prefix):
                raise ReleaseStoreError(f"{self.location}{folder}: exists; a release folder is never overwritten")
            try:
                self.client.put_object(Bucket=self.bucket, Key=prefix + INCOMPLETE, Body=b"", IfNoneMatch="*")
            except ClientError as exc:
                if _error_code(exc) in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                    raise ReleaseStoreError(f"{self.location}{folder}: another release is writing it") from None
                raise
            claimed = True
            sums = {}
            for name in names:
                whole, sums[name] = s3_sha256(stage / name)
                if whole != expected[name][1]:  # the staged bytes are still the ones the manifest describes
                    raise ReleaseStoreError(f"{stage / name}: SHA-256 differs from the manifest's")
                kind = CONTENT_TYPES.get(Path(name).suffix, "application/octet-stream")
                self.client.upload_file(str(stage / name), self.bucket, prefix + name, Config=self.transfer,
                                        ExtraArgs={"ContentType": kind, "ChecksumAlgorithm": "SHA256"})
            self._verify(stage, folder, prefix, names, expected, sums)
            self.client.delete_object(Bucket=self.bucket, Key=prefix + INCOMPLETE)
            claimed = False
        except BaseException:
            if claimed:
                with contextlib.suppress(Exception):  # the marker keeps it out of sight until sweep
                    self._delete_prefix(prefix, marker_last=True)
            raise
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def _verify(self, stage: Path, folder: str, prefix: str, names: list[str], expected: Expected,
                sums: dict[str, str]) -> None:
        listed = self._listing(prefix)
        problems = [f"{k[len(prefix):]}: not in the release" for k in listed
                    if k[len(prefix):] not in expected and k != prefix + INCOMPLETE]
        for name in names:
            obj = listed.get(prefix + name)
            if obj is None:
                problems.append(f"{name}: missing")
                continue
            if int(obj["Size"]) != expected[name][0]:
                problems.append(f"{name}: {obj['Size']} bytes, expected {expected[name][0]}")
                continue
            head = self.client.head_object(Bucket=self.bucket, Key=prefix + name, ChecksumMode="ENABLED")
            checksum = head.get("ChecksumSHA256")
            if checksum:  # S3 computed it from the bytes it stored; "-<parts>" on a multipart object
                if str(checksum).split("-")[0] != sums[name]:
                    problems.append(f"{name}: SHA-256 checksum differs")
            elif str(obj["ETag"]).strip('"') != s3_etag(stage / name):  # an endpoint without checksums
                problems.append(f"{name}: ETag differs")
        if problems:
            raise ReleaseStoreError(f"{self.location}{folder}: does not verify: {'; '.join(problems)}")

    def folder_exists(self, folder: str) -> bool:
        return bool(self._listing(self.key(folder.rstrip("/") + "/")))

    def read_versioned(self, rel: str) -> tuple[bytes | None, str | None]:
        from botocore.exceptions import ClientError

        try:
            got = self.client.get_object(Bucket=self.bucket, Key=self.key(rel))
        except ClientError as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None, None
            raise
        return bytes(got["Body"].read()), str(got["ETag"])

    def write_if(self, rel: str, data: bytes, version: str | None) -> None:
        """One conditional PUT: ``If-Match`` the ETag read (``version``), or ``If-None-Match: *`` when the
        object did not exist; ``Conflict`` when another writer changed it in between."""
        from botocore.exceptions import ClientError

        kind = CONTENT_TYPES.get(Path(rel).suffix, "application/octet-stream")
        condition = {"IfMatch": version} if version else {"IfNoneMatch": "*"}
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.key(rel), Body=data, ContentType=kind,
                                   **condition)
        except ClientError as exc:
            if _error_code(exc) in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                raise Conflict(f"{self.url(rel)}: changed by another release since it was read") from None
            raise

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
        return [d for d in self._children(self.key(f"{self.base}/")) if _is_date(d)]

    def folders(self, release_date: str) -> list[str]:
        """The complete folders of a date (an upload in progress or killed keeps its ``.incomplete`` marker)."""
        base = self.key(f"{self.base}/{release_date}/")
        incomplete = {k[len(base):].split("/")[0] for k in self._listing(base) if k.endswith("/" + INCOMPLETE)}
        return [d for d in self._children(base) if not d.startswith(".") and d not in incomplete]

    def _delete_prefix(self, prefix: str, marker_last: bool = False) -> None:
        keys = sorted(self._listing(prefix), key=lambda k: marker_last and k.endswith("/" + INCOMPLETE))
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})

    def delete(self, rel: str) -> None:
        if rel.endswith("/"):
            self._delete_prefix(self.key(rel))
        else:
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": self.key(rel)}]})

    def url(self, rel: str) -> str:
        return f"{self.location}{rel}"
