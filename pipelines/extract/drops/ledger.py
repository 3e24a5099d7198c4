"""The drop ledger (``TableState.ledger``, committed with the rows): what each file name delivered.

Keyed by file name (the ``_source_file`` lineage value); each entry holds the content id of the last
bytes seen under that name, the listing fingerprint (so an untouched file is not hashed again), the
batch, and a status:

- ``loaded``: ``rows`` read, ``written`` landed (a re-sent file with changed rows lands only those);
- ``rejected``: ``reason``, ``line``, ``at`` (UTC ISO time) and ``spec`` (:func:`spec_id` of the table's drop spec then): the
  same bytes are retried only once the spec changed (the operator declared the encoding the reason
  asked for); rejected bytes never make another delivery a repeat (they never landed);
- ``repeat``: the same bytes as file ``of``, delivered again under another name; nothing loaded.

Any status: ``rejections``, the times (UTC ISO, the last few) the name was rejected, kept when a fixed
re-delivery loads under the name, so the report still counts a file rejected in its window.

A delivery is a repeat only when its bytes are the CURRENT content of some entry (its own name's, or
another name's): the same bytes re-delivered under the same name (copied over, touched) keep their
entry and add the batch to its ``repeats``. Bytes a name delivered before it changed are not known: a
name that goes back to an older content (a revert) is loaded, and the key + row-hash compare lands
exactly the reverted rows. Entries written before content identity (no ``content``) are matched by
their old ``size-mtime`` or ETag fingerprint.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from pipelines.extract.drops.listing import DropFile
from pipelines.registry import DropTable

LOADED, REJECTED, REPEAT = "loaded", "rejected", "repeat"
_KEEP_REPEATS = 10
_KEEP_REJECTIONS = 10


def spec_id(table: DropTable) -> str:
    """A hash of the table's drop spec (format, encoding, columns, types, ...): a rejected file is read
    again once it changes."""
    return hashlib.sha256(table.model_dump_json().encode("utf-8")).hexdigest()[:16]


class DropLedger:
    """One load's view of the ledger ``entries`` (updated in place) for batch ``batch_id`` under the
    drop spec ``spec`` (:func:`spec_id`)."""

    def __init__(self, entries: dict[str, dict[str, Any]], batch_id: str, spec: str = "") -> None:
        self.entries = entries
        self.batch_id = batch_id
        self.spec = spec
        self.rerun = any(e.get("batch") == batch_id for e in entries.values())
        self._mine: set[str] = set()
        self._by_content: dict[str, str] = {}
        # loaded names first: a repeat is reported as a repeat of the file whose rows landed
        for name in sorted(entries, key=lambda n: entries[n].get("status") != LOADED):
            if self._current(name):
                self._by_content.setdefault(entries[name]["content"], name)

    def _current(self, name: str) -> bool:
        """Whether the entry's content is what the name holds now in the lake's view. A rejected content
        never landed; a rerun redoes its own batch's files, so their contents are not known yet."""
        entry = self.entries.get(name) or {}
        return (bool(entry.get("content")) and entry.get("status") != REJECTED
                and (entry.get("batch") != self.batch_id or name in self._mine))

    def unchanged(self, f: DropFile) -> bool:
        """The file's name and fingerprint are in the ledger from an earlier batch (a rejected one under
        the same drop spec): nothing to read."""
        entry = self.entries.get(f.name)
        if entry is None or entry.get("batch") == self.batch_id:
            return False
        if entry.get("status") == REJECTED and entry.get("spec") != self.spec:
            return False  # the spec changed since: retry it
        if "content" not in entry:  # an entry from before content identity
            return entry.get("fp") in (f.fingerprint, "-".join(f.fingerprint.split("-")[:2]))
        return bool(entry.get("fp") == f.fingerprint)

    def still_rejected(self, f: DropFile, content: str) -> bool:
        """The same bytes under the same name were rejected by an earlier batch under this spec: not read
        again (the fingerprint is refreshed so they are not hashed again either)."""
        entry = self.entries.get(f.name)
        if (entry is None or entry.get("status") != REJECTED or entry.get("content") != content
                or entry.get("spec") != self.spec or entry.get("batch") == self.batch_id):
            return False
        entry["fp"] = f.fingerprint
        return True

    def known(self, content: str) -> str | None:
        """The name whose current content these bytes are, if any (see the module docstring)."""
        return self._by_content.get(content)

    def _set(self, f: DropFile, content: str, status: str, **fields: Any) -> None:
        previous = self.entries.get(f.name) or {}
        old = previous.get("content")
        entry = {"content": content, "fp": f.fingerprint, "batch": self.batch_id, "status": status, **fields}
        if previous.get("rejections"):
            entry.setdefault("rejections", previous["rejections"])
        self.entries[f.name] = entry
        self._mine.add(f.name)
        if old and old != content and self._by_content.get(old) == f.name:
            # the name no longer holds those bytes: they are known only if another name holds them now
            del self._by_content[old]
            for name, entry in self.entries.items():
                if entry.get("content") == old and self._current(name):
                    self._by_content[old] = name
                    break
        if self._current(f.name):
            self._by_content.setdefault(content, f.name)

    def loaded(self, f: DropFile, content: str, rows: int, written: int) -> None:
        self._set(f, content, LOADED, rows=rows, written=written)

    def rejected(self, f: DropFile, content: str, reason: str, line: int | None) -> None:
        # ``at``: when it was rejected (UTC ISO); a batch of rejected files only commits no snapshot to time it by
        at = datetime.now(UTC).isoformat(timespec="seconds")
        previous = self.entries.get(f.name) or {}
        earlier = previous.get("rejections") or (
            [previous["at"]] if previous.get("status") == REJECTED and previous.get("at") else [])
        self._set(f, content, REJECTED, reason=reason, line=line, spec=self.spec, at=at,
                  rejections=[*earlier, at][-_KEEP_REJECTIONS:])

    def repeat(self, f: DropFile, content: str, of: str) -> None:
        if of == f.name:  # the same bytes again under the same name
            entry = self.entries[of]
            entry["fp"] = f.fingerprint
            entry["repeats"] = [*entry.get("repeats", []), self.batch_id][-_KEEP_REPEATS:]
        else:
            self._set(f, content, REPEAT, of=of)
