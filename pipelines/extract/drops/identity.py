"""A drop file is known by its content, not by its name, size or mtime.

``content_id`` is ``sha256:<hex>`` of the bytes, streamed once, for local files. On S3 an object
uploaded in one part has an ETag that is the MD5 of its bytes: ``md5:<etag>`` costs no read. A
multipart ETag (``<hex>-<parts>``) is an MD5 of the parts' MD5s and changes with the part size, so the
same bytes uploaded twice can carry two ETags: those objects are hashed (sha256) like local files.
(An SSE-KMS ETag is not an MD5 either; it is still unique per upload, so a re-upload of the same bytes
looks new there, and the key + row-hash compare then lands none of its unchanged rows.)
Hashing is skipped for a file whose listing fingerprint the ledger already holds under its name.
"""

from __future__ import annotations

import hashlib
import re

from pipelines.extract.drops import opening
from pipelines.extract.drops.listing import DropFile
from pipelines.settings import Settings

_SINGLE_PART_ETAG = re.compile(r"^[0-9a-f]{32}$")


def content_id(f: DropFile, settings: Settings) -> str:
    """The content identity of ``f`` (see the module docstring)."""
    if f.uri.startswith("s3://"):
        etag = f.fingerprint.strip('"').lower()
        if _SINGLE_PART_ETAG.match(etag):
            return f"md5:{etag}"
    digest = hashlib.sha256()
    with opening.open_binary(f, settings) as raw:
        while chunk := raw.read(opening.READ_CHUNK_BYTES):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"
