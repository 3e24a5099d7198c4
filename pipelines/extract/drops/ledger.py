"""The drop ledger (``TableState.ledger``, committed with the rows): what each file name delivered.

Keyed by file name (the ``_source_file`` lineage value); each entry holds the content id of the last
bytes seen under that name, the listing fingerprint (so an untouched file is not hashed again), the
batch, and a status:

- ``loaded``: ``rows`` read, ``written`` landed (a re-sent file with changed rows lands only those);
- ``rejected``: ``reason``, ``line``; the same bytes are not retried;
- ``repeat``: the same bytes as file ``of``, delivered again under another name; nothing loaded.

The same bytes re-delivered under the same name (copied over, touched) keep their entry and add the
batch to its ``repeats``. When a name delivers new bytes, the contents it delivered before stay known
(``earlier``), so a stale copy sent again is a repeat, not a newer version. Entries written before
content identity (no ``content``) are matched by their old ``size-mtime`` or ETag fingerprint.
"""

from __future__ import annotations

from typing import Any

from pipelines.extract.drops.listing import DropFile

LOADED, REJECTED, REPEAT = "loaded", "rejected", "repeat"
_KEEP_REPEATS = 10


class DropLedger:
    """One load's view of the ledger ``entries`` (updated in place) for batch ``batch_id``."""

    def __init__(self, entries: dict[str, dict[str, Any]], batch_id: str) -> None:
        self.entries = entries
        self.batch_id = batch_id
        self.rerun = any(e.get("batch") == batch_id for e in entries.values())
        self._by_content: dict[str, str] = {}
        for name, entry in entries.items():
            for earlier in entry.get("earlier", []):
                self._by_content.setdefault(earlier, name)
            # A rerun redoes its own batch's files: their contents are not known yet.
            if entry.get("content") and entry.get("status") != REPEAT and entry.get("batch") != batch_id:
                self._by_content.setdefault(entry["content"], name)

    def unchanged(self, f: DropFile) -> bool:
        """The file's name and fingerprint are in the ledger from an earlier batch: nothing to read."""
        entry = self.entries.get(f.name)
        if entry is None or entry.get("batch") == self.batch_id:
            return False
        if "content" not in entry:  # an entry from before content identity
            return entry.get("fp") in (f.fingerprint, "-".join(f.fingerprint.split("-")[:2]))
        return bool(entry.get("fp") == f.fingerprint)

    def known(self, content: str) -> str | None:
        """The name under which these bytes were delivered before, if any."""
        return self._by_content.get(content)

    def _earlier(self, name: str) -> dict[str, Any]:
        entry = self.entries.get(name)
        if entry is None:
            return {}
        earlier = list(entry.get("earlier", []))
        if entry.get("content") and entry.get("batch") != self.batch_id and entry["content"] not in earlier:
            earlier.append(entry["content"])
        return {"earlier": earlier} if earlier else {}

    def _set(self, f: DropFile, content: str, status: str, **fields: Any) -> None:
        self.entries[f.name] = {"content": content, "fp": f.fingerprint, "batch": self.batch_id,
                                "status": status, **fields, **self._earlier(f.name)}

    def loaded(self, f: DropFile, content: str, rows: int, written: int) -> None:
        self._set(f, content, LOADED, rows=rows, written=written)
        self._by_content.setdefault(content, f.name)

    def rejected(self, f: DropFile, content: str, reason: str, line: int | None) -> None:
        self._set(f, content, REJECTED, reason=reason, line=line)
        self._by_content.setdefault(content, f.name)

    def repeat(self, f: DropFile, content: str, of: str) -> None:
        if of == f.name:  # the same bytes again under the same name
            entry = self.entries[of]
            entry["fp"] = f.fingerprint
            entry["repeats"] = [*entry.get("repeats", []), self.batch_id][-_KEEP_REPEATS:]
        else:
            self._set(f, content, REPEAT, of=of)
