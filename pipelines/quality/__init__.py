"""Quality: bulk validators, standardization and the write-audit-publish gate (issue 3)."""
