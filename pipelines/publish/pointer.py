"""``open/latest.json``: the portal's one entry point, mapping each dataset to its current release folder.

``{"updated_at": iso, "catalog": "open/<d>/catalog.jsonld", "datasets": {<ds>: {"release_date": d,
"path": "open/<d>/<ds>/", "manifest": <sha256 of that folder's manifest.json>, "rows": n, "build_id": …,
"fingerprint": …}}}``. It is replaced whole (local: temp file + rename; S3: one PUT) after each dataset's
folder is in place and verified, so at every instant every entry names a complete, verified release; a
dataset that fails or is blocked keeps its entry. ``build_id`` and ``fingerprint`` (the contract and release
format the folder was made with) tell the next run whether the dataset is unchanged.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pipelines.errors import CitylakeError
from pipelines.publish.store import Store
from pipelines.settings import TZ

POINTER = "open/latest.json"


def read_pointer(store: Store) -> dict[str, Any]:
    """The current pointer, or an empty one when none was written yet. A pointer that is not JSON stops the
    release: writing a new one over it would drop every dataset it names."""
    data = store.read_bytes(POINTER)
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


def move_dataset(store: Store, dataset: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Point ``dataset`` at ``entry`` (re-reading the pointer first: only this dataset's entry changes)."""
    pointer = read_pointer(store)
    datasets = dict(pointer["datasets"])
    datasets[dataset] = entry
    new = {**pointer, "updated_at": datetime.now(TZ).isoformat(timespec="seconds"),
           "datasets": dict(sorted(datasets.items()))}
    store.write_atomic(POINTER, encode(new))
    return new


def set_catalog(store: Store, catalog: str) -> dict[str, Any]:
    """Record the path of the newest catalog.jsonld in the pointer."""
    pointer = read_pointer(store)
    if pointer.get("catalog") == catalog:
        return pointer
    new = {**pointer, "updated_at": datetime.now(TZ).isoformat(timespec="seconds"), "catalog": catalog}
    store.write_atomic(POINTER, encode(new))
    return new


def referenced_folders(pointer: dict[str, Any]) -> set[str]:
    """Every folder the pointer names (``open/<d>/<ds>``, no trailing slash)."""
    return {str(e.get("path", "")).rstrip("/") for e in pointer.get("datasets", {}).values() if e.get("path")}
