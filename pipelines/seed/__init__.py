"""The synthetic Hefei city (embedded default source systems and their defect truth)."""

from pipelines.seed.city import REFERENCE_DATE, corrupt_enterprise_uscc, seed_city

__all__ = ["REFERENCE_DATE", "corrupt_enterprise_uscc", "seed_city"]
