"""``open/latest.json``: the portal's one entry point, mapping each dataset to its current release folder.

``{"updated_at": iso, "catalog": "open/<d>/catalog.jsonld", "datasets": {<ds>: {"release_date": d,
"path": "open/<d>/<ds>/", "manifest": <sha256 of that folder's manifest.json>, "rows": n, "build_id": …,
"fingerprint": …}}}``. It is replaced whole (local: temp file + rename; S3: one PUT) after each dataset's
folder is in place and verified, so at every instant every entry names a complete, verified release; a
dataset that fails or is blocked keeps its entry; a withdrawn dataset loses it. Every change is a
read-modify-write of one entry: locally under the release lock (flock), on S3 a conditional PUT
(``If-Match`` the ETag read) retried from the read when another host's release moved the pointer in between. ``build_id`` and ``fingerprint`` (the contract and release
format the folder was made with) tell the next run whether the dataset is unchanged.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pipelines.errors import CitylakeError
from pipelines.publish.store import Conflict, Store
from pipelines.settings import TZ

POINTER = "open/latest.json"
ATTEMPTS = 8


def read_pointer(store: Store) -> dict[str, Any]:
    """The current pointer, or an empty one when none was written yet. A pointer that is not JSON stops the
    release: writing a new one over it would drop every dataset it names."""
    return _parse(store, store.read_bytes(POINTER))


def _parse(store: Store, data: bytes | None) -> dict[str, Any]:
    if data is None:
        return {"updated_at": None, "datasets": {}}
    try:
        pointer = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CitylakeError(f"{store.url(POINTER)}: not valid JSON ({exc}); restore it from the release folders "
                            "before releasing again") from None
    if not isinstance(pointer, dict) or not isinstance(pointer.get("datasets"), dict):
        raise CitylakeError(f"{store.url(POINTER)}: no \"datasets\" object; restore it before releasing again")
    return pointer


def encode(pointer: dict[str, Any]) -> bytes:
    return (json.dumps(pointer, ensure_ascii=False, indent=2, sort_keys=False) + "\n").encode("utf-8")


def update(store: Store, change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> dict[str, Any]:
    """Read the pointer, apply ``change`` (None: nothing to change) and write it back conditionally on the
    version read; a write that lost to another release is retried from a fresh read."""
    for attempt in range(ATTEMPTS):
        data, version = store.read_versioned(POINTER)
        pointer = _parse(store, data)
        new = change(pointer)
        if new is None:
            return pointer
        new = {**new, "updated_at": datetime.now(TZ).isoformat(timespec="seconds")}
        try:
            store.write_if(POINTER, encode(new), version)
            return new
        except Conflict:
            time.sleep(random.uniform(0.05, 0.2) * (attempt + 1))  # noqa: S311 - jitter, not a secret
    raise CitylakeError(f"{store.url(POINTER)}: changed by other releases {ATTEMPTS} times in a row; run again")


def move_dataset(store: Store, dataset: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Point ``dataset`` at ``entry`` (only this dataset's entry changes)."""
    def change(pointer: dict[str, Any]) -> dict[str, Any]:
        return {**pointer, "datasets": dict(sorted({**pointer["datasets"], dataset: entry}.items()))}

    return update(store, change)


def remove_dataset(store: Store, dataset: str) -> dict[str, Any] | None:
    """Drop ``dataset``'s entry (a withdrawal); its former entry, None when it had none."""
    removed: dict[str, Any] = {}

    def change(pointer: dict[str, Any]) -> dict[str, Any] | None:
        removed.clear()
        if dataset not in pointer["datasets"]:
            return None
        removed.update(pointer["datasets"][dataset])
        return {**pointer, "datasets": {k: v for k, v in pointer["datasets"].items() if k != dataset}}

    update(store, change)
    return dict(removed) or None


def set_catalog(store: Store, catalog: str) -> dict[str, Any]:
    """Record the path of the newest catalog.jsonld in the pointer."""
    return update(store, lambda p: None if p.get("catalog") == catalog else {**p, "catalog": catalog})


def referenced_folders(pointer: dict[str, Any]) -> set[str]:
    """Every folder the pointer names (``open/<d>/<ds>``, no trailing slash)."""
    return {str(e.get("path", "")).rstrip("/") for e in pointer.get("datasets", {}).values() if e.get("path")}
