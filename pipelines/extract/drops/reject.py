"""Rejecting a drop file: copy it aside (never touching the drop) with its reason; reason text helpers."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path, PurePosixPath

from pipelines.extract.drops.listing import DropFile, open_listed
from pipelines.extract.drops.s3 import s3_client, split_s3
from pipelines.privacy import mask_file_name
from pipelines.registry import check_code
from pipelines.settings import Settings

_BATCH_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]*$")
_LINE_IN_REASON = re.compile(r"第\s*(\d+)\s*行")


def _safe_relative(name: str) -> str:
    parts = PurePosixPath(name).parts
    if not parts or name.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in name:
        raise ValueError(f"file name {mask_file_name(name)!r} must be a relative path without '..'")
    return "/".join(parts)


def reject_file(
    f: DropFile,
    reason: str,
    settings: Settings,
    system: str,
    table: str,
    batch_id: str,
    *,
    line: int | None = None,
) -> str:
    """COPY the file (the drop is never touched) to ``<rejected_dir>/<system>/<table>/<batch_id>/<name>``
    with ``<name>.reason.json`` beside it; returns where the copy went. Rerunning overwrites (idempotent).
    ``line`` defaults to the ``第 N 行`` in ``reason``, if any."""
    check_code(system, "system code")
    check_code(table, "table code")
    if not _BATCH_ID_RE.match(batch_id) or ".." in batch_id:
        raise ValueError(f"batch id {batch_id!r} must match {_BATCH_ID_RE.pattern} without '..'")
    name = _safe_relative(f.name)
    if line is None and (m := _LINE_IN_REASON.search(reason)):
        line = int(m.group(1))
    record = {
        "file": f.name,
        "reason": one_line(reason) if "\n" in reason else reason,
        "line": line,
        "batch_id": batch_id,
        "system": system,
        "table": table,
        "source_uri": f.uri,
        "size": f.size,
        "fingerprint": f.fingerprint,
    }
    payload = (json.dumps(record, ensure_ascii=False, indent=2) + "\n").encode("utf-8")
    relative = f"{system}/{table}/{batch_id}/{name}"
    target_root = settings.rejected_dir
    if target_root.startswith("s3://"):
        bucket, prefix = split_s3(target_root)
        key = f"{prefix.strip('/')}/{relative}" if prefix.strip("/") else relative
        client = s3_client(settings)
        if f.uri.startswith("s3://"):
            src_bucket, src_key = split_s3(f.uri)
            client.copy({"Bucket": src_bucket, "Key": src_key}, bucket, key)
        else:
            with open_listed(f) as fd, os.fdopen(os.dup(fd), "rb") as src:  # the listed file, never a link
                client.upload_fileobj(src, bucket, key)
        client.put_object(Bucket=bucket, Key=f"{key}.reason.json", Body=payload, ContentType="application/json")
        return f"s3://{bucket}/{key}"
    root = Path(target_root)
    if not root.is_absolute():
        root = settings.root / root
    target = root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    if f.uri.startswith("s3://"):
        src_bucket, src_key = split_s3(f.uri)
        s3_client(settings).download_file(src_bucket, src_key, str(target))
    else:
        with open_listed(f) as fd, os.fdopen(os.dup(fd), "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    Path(f"{target}.reason.json").write_bytes(payload)
    return str(target)


def one_line(text: str) -> str:
    return " ".join(str(text).split())[:300]
