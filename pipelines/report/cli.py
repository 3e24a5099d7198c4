"""``citylake report``: build the governance site and print where it is."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated

import typer


def report(out: Annotated[Path | None, typer.Option("--out", help="Folder to write the site to (default <lake>/report; "
                                                    "for a past --date without --publish <lake>/report-<date>).")] = None,
           day: Annotated[str | None, typer.Option("--date", help="Report day YYYY-MM-DD (Asia/Shanghai; default today).")] = None,
           publish: Annotated[bool, typer.Option("--publish", help="Put this build under <artifacts>/report/ (CITYLAKE_ARTIFACTS_DIR; "
                                                 "default the S3 warehouse) even with --out or a past --date (the default build always does).")] = False) -> None:
    """Build the Chinese governance report (static HTML, opens offline) and print its index.html."""
    from pipelines.errors import CitylakeError
    from pipelines.report.site import build_site
    from pipelines.settings import load_settings

    try:
        today = date.fromisoformat(day) if day else None
    except ValueError:
        raise CitylakeError(f"--date {day!r}: expected YYYY-MM-DD") from None
    index = build_site(load_settings(), out_dir=out, today=today, publish=True if publish else None)
    typer.echo(str(index))
