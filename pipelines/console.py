"""The CLI's consoles and its one-line error exit, shared by every command module (``citylake`` and its
``catalog``/``contract`` sub-apps) so each prints errors the same way."""

from __future__ import annotations

from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table


class TableConsole(Console):
    """A console that never cuts a table's cells (``raw.air_qualit…``). Piped (no terminal), a table is
    printed at its natural width, each row one line a script can read whole; on a terminal narrower than the
    table, cells that would be cut with an ellipsis fold onto the next line instead (every character kept)."""

    def print(self, *objects: Any, **kwargs: Any) -> None:  # noqa: A003 - Console's own name
        from rich.measure import Measurement

        tables = [o for o in objects if isinstance(o, Table)]
        unbounded = self.options.update_width(1 << 20)  # measure() is capped at the console's width
        need = max((Measurement.get(self, unbounded, t).maximum for t in tables), default=0)
        if need <= self.width:
            super().print(*objects, **kwargs)
        elif self.is_terminal:
            for t in tables:
                for column in t.columns:
                    if column.overflow == "ellipsis":
                        column.overflow = "fold"
            super().print(*objects, **kwargs)
        else:
            saved = self._width
            self._width = need
            try:
                super().print(*objects, crop=False, **kwargs)
            finally:
                self._width = saved


out = TableConsole()
err = Console(stderr=True)


def fail(message: str) -> NoReturn:
    """Print ``error: <message>`` as one line on stderr and exit 1 (a multi-line message is joined by "; ")."""
    one_line = "; ".join(line.strip() for line in message.splitlines() if line.strip())
    err.print(f"[bold red]error:[/] {one_line}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def wide(columns: int = 16) -> Console:
    """The console for a table: piped output has no terminal width, and a narrow one would cut identifiers
    (a ``TableConsole`` widens itself to the table's need)."""
    return out if out.is_terminal else TableConsole(width=max(160, 24 * columns))
