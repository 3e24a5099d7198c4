"""Rendering: one Jinja2 environment, the templates under ``templates/``, Chinese number and time formats.

Every page links with relative paths only (``root`` is ``""`` or ``"../"``), so the site opens from the file
system and from any web server path; templates load nothing but the site's own ``assets/``.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from pipelines.catalog.build import STEP_LABELS
from pipelines.contracts import OVERRIDE_LABELS
from pipelines.formats import beijing_time, percent
from pipelines.privacy.mask import mask_text

TEMPLATES = Path(__file__).resolve().parent / "templates"
ASSETS = Path(__file__).resolve().parent / "assets"
_SAFE = re.compile(r"^[0-9A-Za-z_][0-9A-Za-z_.-]{0,120}$")


def page_name(key: str) -> str:
    """A file name for a department code or a catalog identifier: the key itself when it is plain ASCII
    (codes, ``std.person``), else a short hash (old rows that hold a department's name)."""
    if _SAFE.match(key) and ".." not in key:
        return key
    return "x-" + hashlib.sha1(key.encode("utf-8")).hexdigest()[:12]


def pct(value: float | None, digits: int = 2) -> str:
    """A 0..1 score or rate as a percentage (``pipelines.formats.percent``: rounded down, ``<0.01%``, "—")."""
    return percent(value, digits)


def num(value: int | float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.2f}"


def when(value: datetime | date | str | None) -> str:
    """Asia/Shanghai time as 2026-11-30 06:00 (``pipelines.formats.beijing_time``, as catalog.csv has it)."""
    return beijing_time(value)


def score_class(value: float | None) -> str:
    """CSS class of a score: good ≥ 99 %, fair ≥ 95 %, poor below, none when absent."""
    if value is None:
        return "none"
    return "good" if value >= 0.99 else "fair" if value >= 0.95 else "poor"


def href(path: str) -> str:
    """Percent-encode a relative link (file names are ASCII already; this guards anything else)."""
    return quote(path, safe="/.#-_~")


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    # mask_ids: a contact's office line stays readable, a personal mobile number is masked
    env.filters.update(pct=pct, num=num, when=when, score_class=score_class, page=page_name, href=href, mask_ids=mask_text,
                       tojson_attr=lambda v: json.dumps(v, ensure_ascii=False, separators=(",", ":")))
    env.globals.update(step_labels=STEP_LABELS, layer_labels={"raw": "原始层", "std": "标准层", "curated": "主题层"},
                       attribute_labels=OVERRIDE_LABELS)
    return env


def render(template: str, out: Path, **context: Any) -> Path:
    """Render ``template`` to ``out`` (UTF-8), creating its folder."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(environment().get_template(template).render(**context), encoding="utf-8")
    return out
