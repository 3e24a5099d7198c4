"""S3 access for drops: a boto3 client (listing, copies) and pyarrow's S3 filesystem (reads), both from
``pipelines.lake.s3``, and how a botocore error is told."""

from __future__ import annotations

# moved one floor down (pipelines.lake.artifacts uses them too); the drop modules import them from here
from pipelines.lake.s3 import s3_client as s3_client
from pipelines.lake.s3 import s3_filesystem as s3_filesystem
from pipelines.lake.s3 import split_s3 as split_s3


def s3_error(exc: Exception) -> str:
    """A short, credential-free description of a botocore error."""
    response = getattr(exc, "response", None) or {}
    code = (response.get("Error") or {}).get("Code")
    return str(code) if code else type(exc).__name__
