"""The lake: Iceberg catalog, raw-zone writer, read-only views."""
