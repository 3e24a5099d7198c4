"""Listing a drop (local folder or S3 prefix): which files match a table's glob. Reads nothing but the listing."""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.errors import SourceError
from pipelines.extract.drops.s3 import s3_client, s3_error, split_s3
from pipelines.privacy import mask_file_name
from pipelines.registry import DropTable, FileDrop
from pipelines.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DropFile:
    """One file of a drop, as listed."""

    uri: str
    """Absolute local path or ``s3://bucket/key``."""
    name: str
    """Path relative to the drop location (posix separators): lineage ``_source_file`` and ledger key."""
    size: int
    fingerprint: str
    """What says the bytes did not change since they were last hashed: the ETag on S3; locally
    ``size-mtime_ns-ctime_ns-inode`` (a rewrite changes ctime even when size and mtime are kept). Not
    the file's identity: that is its content (:func:`pipelines.extract.drops.identity.content_id`)."""
    inode: tuple[int, int] | None = None
    """Local files: ``(st_dev, st_ino)`` of the file the listing checked; every open must find that same
    file (:func:`open_listed`), so a symlink swapped in after listing is never read."""


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Glob over posix relative paths: ``*``/``?``/``[..]`` stay within one folder, ``**`` crosses."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : end]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _hidden(name: str) -> bool:
    """Dot files and Office lock files (``~$report.xlsx``) are never data."""
    return any(part.startswith((".", "~$")) for part in name.split("/"))


def list_drop_files(drop: FileDrop, table: DropTable, settings: Settings) -> list[DropFile]:
    """The files of ``drop`` matching ``table.glob``, sorted by name. Reads nothing but the listing."""
    matcher = _glob_regex(table.glob)
    recursive = "/" in table.glob or "**" in table.glob
    location = settings.resolve(drop.location)
    if location.startswith("s3://"):
        files = _list_s3(location, matcher, recursive, settings)
    else:
        base = Path(location)
        files = _list_local(base, matcher, recursive)
    return sorted(files, key=lambda f: f.name)


def _list_local(base: Path, matcher: re.Pattern[str], recursive: bool) -> list[DropFile]:
    """Regular files under ``base``. A symlinked file is listed only if it resolves inside the drop
    folder (so a link cannot make the lake read, or copy to ``rejected/``, a file from elsewhere);
    symlinked folders are not descended (``os.walk`` default)."""
    if not base.is_dir():
        raise SourceError(f"drop folder {base} does not exist or is not a folder")
    root = base.resolve()
    found: list[DropFile] = []
    for folder, dirs, names in os.walk(base):
        if not recursive:
            dirs.clear()
        dirs[:] = [d for d in dirs if not _hidden(d)]
        for file_name in names:
            path = Path(folder) / file_name
            name = path.relative_to(base).as_posix()
            if _hidden(name) or not matcher.match(name) or not path.is_file():
                continue
            target = path.resolve()
            if not target.is_relative_to(root):
                log.warning("drop %s: %s is a symlink to a file outside the drop folder; not listed", base,
                            mask_file_name(name))  # people name files after the person
                continue
            try:
                st = os.stat(target, follow_symlinks=False)  # what was resolved, not a link swapped in since
            except FileNotFoundError:
                continue  # removed while listing
            if not stat.S_ISREG(st.st_mode):
                continue
            fingerprint = f"{st.st_size}-{st.st_mtime_ns}-{st.st_ctime_ns}-{st.st_ino}"
            found.append(DropFile(str(target), name, st.st_size, fingerprint, (st.st_dev, st.st_ino)))
    return found


@contextmanager
def open_listed(f: DropFile) -> Iterator[int]:
    """A read-only descriptor of the local file the listing saw: the path's last component is not
    followed if it is a link (``O_NOFOLLOW``), and the opened file must be the listed inode, so a file or
    folder replaced by a link out of the drop after listing is refused, not read."""
    try:
        fd = os.open(f.uri, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if os.path.islink(f.uri):
            raise SourceError(f"drop file {mask_file_name(f.name)}: became a symlink after listing; not read") from None
        raise SourceError(f"drop file {mask_file_name(f.name)}: cannot open ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if f.inode is not None and (st.st_dev, st.st_ino) != f.inode:
            raise SourceError(f"drop file {mask_file_name(f.name)}: not the file that was listed (replaced since); not read")
        yield fd
    finally:
        os.close(fd)


def _list_s3(location: str, matcher: re.Pattern[str], recursive: bool, settings: Settings) -> list[DropFile]:
    bucket, prefix = split_s3(location)
    prefix = prefix.strip("/")
    list_prefix = f"{prefix}/" if prefix else ""
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": list_prefix}
    if not recursive:
        kwargs["Delimiter"] = "/"
    found: list[DropFile] = []
    try:
        for page in s3_client(settings).get_paginator("list_objects_v2").paginate(**kwargs):
            for obj in page.get("Contents", []):
                key: str = obj["Key"]
                name = key[len(list_prefix) :]
                if not name or key.endswith("/") or _hidden(name) or not matcher.match(name):
                    continue
                etag = str(obj.get("ETag", "")).strip('"')
                found.append(DropFile(f"s3://{bucket}/{key}", name, int(obj["Size"]), etag))
    except Exception as exc:  # botocore errors: name the location, never the credentials
        if type(exc).__module__.startswith(("botocore", "boto3")):
            raise SourceError(f"cannot list {location}: {s3_error(exc)}") from None
        raise
    return found
