"""The curated layer (issue 10): one DuckDB SQL model per curated dataset and the runner that puts each build
through the write-audit-publish gate; computations no SQL function covers (the HJ 633 air quality index)
live beside them as vectorised functions the models call."""
