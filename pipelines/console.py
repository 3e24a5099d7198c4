"""The CLI's consoles and its one-line error exit, shared by every command module (``citylake`` and its
``catalog``/``contract`` sub-apps) so each prints errors the same way."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

out = Console()
err = Console(stderr=True)


def fail(message: str) -> NoReturn:
    """Print ``error: <message>`` as one line on stderr and exit 1 (a multi-line message is joined by "; ")."""
    one_line = "; ".join(line.strip() for line in message.splitlines() if line.strip())
    err.print(f"[bold red]error:[/] {one_line}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def wide(columns: int = 16) -> Console:
    """The console for a table: piped output has no terminal width, and a narrow one would cut identifiers."""
    return out if out.is_terminal else Console(width=max(160, 24 * columns))
