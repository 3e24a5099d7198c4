"""boto3's S3 client and pyarrow's S3 filesystem for the lake's own S3 locations, one floor below the stages that read and write
there: file drops (``pipelines.extract.drops``) and the shared artifacts (``pipelines.lake.artifacts``).
Endpoint from ``settings.s3_endpoint`` and credentials from the standard ``AWS_*`` chain, as the warehouse's
FileIO (``Settings.catalog_properties``) gets them."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from pipelines.errors import ConfigError
from pipelines.settings import Settings


def s3_client(endpoint: Settings | str | None = None) -> Any:
    """A boto3 S3 client of ``endpoint`` (a URL, or ``settings.s3_endpoint``; None or empty: AWS's default
    endpoint) with the standard ``AWS_*`` credentials, standard retries (5 attempts) and, for a custom
    endpoint (MinIO, moto), path-style addressing. The one factory of the lake's, the drops' and the
    exports' S3 clients (``pipelines.publish.store``)."""
    import boto3
    from botocore.config import Config

    url = endpoint.s3_endpoint if isinstance(endpoint, Settings) else endpoint
    kwargs: dict[str, Any] = {}
    s3_config: dict[str, Any] = {}
    if url:
        kwargs["endpoint_url"] = url
        s3_config["addressing_style"] = "path"
    config = Config(retries={"max_attempts": 5, "mode": "standard"}, s3=s3_config or None)
    return boto3.client("s3", config=config, **kwargs)


def s3_filesystem(settings: Settings, bucket: str) -> Any:
    """pyarrow's S3 filesystem (random access for Parquet); credentials come from the AWS chain."""
    from pyarrow import fs

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if settings.s3_endpoint:
        parts = urlsplit(settings.s3_endpoint if "://" in settings.s3_endpoint else f"https://{settings.s3_endpoint}")
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return fs.S3FileSystem(
            endpoint_override=host,
            scheme=parts.scheme or "https",
            region=region or "us-east-1",
            force_virtual_addressing=False,
        )
    return fs.S3FileSystem(region=region or fs.resolve_s3_region(bucket))


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` → (``bucket``, ``some/key``)."""
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ConfigError(f"{uri!r}: an S3 location needs a bucket (s3://bucket/prefix)")
    return bucket, key
