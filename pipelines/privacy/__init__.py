"""Privacy: what is personal (by declaration and by content) and how it is shown masked.

One module for every output path (``lake show``, gate results and messages, conflict listings, and
later the report, exports and the leak gate), so a new kind of identifier is taught once.
"""

from pipelines.privacy.detect import KINDS, column_kind, detect_kinds, is_bank_card, is_resident_id, value_kinds
from pipelines.privacy.mask import (
    PERSONAL,
    is_personal,
    mask,
    mask_file_name,
    mask_free_text,
    mask_identifiers,
    mask_kind,
    mask_message,
    mask_text,
    quote,
)
from pipelines.privacy.policy import Declarations, column_masks, load_declarations, masked_rows, value_mask

__all__ = [
    "KINDS", "PERSONAL", "Declarations", "column_kind", "column_masks", "detect_kinds", "is_bank_card", "is_personal",
    "is_resident_id", "load_declarations", "mask", "mask_file_name", "mask_free_text", "mask_identifiers", "mask_kind", "mask_message", "mask_text",
    "masked_rows", "quote", "value_kinds", "value_mask",
]
