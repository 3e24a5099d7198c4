"""National identifier arithmetic shared by quality (validators) and privacy (detectors).

One floor below both (it imports nothing from pipelines), so neither imports the other: the stages
import downward (docs/architecture.md, "a module imports downward").
"""

from __future__ import annotations

import numpy as np

# GB 11643 / ISO 7064 MOD 11-2, as python-stdnum's ``cn.ric`` computes it (tests hold the two equal).
RIC_WEIGHTS = np.array([7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2], dtype=np.int32)
RIC_CHECK = np.frombuffer(b"10X98765432", dtype=np.uint8)


def ric_check_characters(body: np.ndarray) -> np.ndarray:
    """The check character (an ASCII byte: 0-9 or X) of each row of an (n, 17) matrix of digit values 0-9."""
    return RIC_CHECK[(body.astype(np.int32) @ RIC_WEIGHTS) % 11]
