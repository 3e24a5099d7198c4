"""``citylake contract …``: draft a dataset contract for a table a new system landed in raw."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from pipelines.console import fail, out
from pipelines.errors import CitylakeError
from pipelines.settings import load_settings

contract_app = typer.Typer(no_args_is_help=True, help="Dataset contracts (schemas/datasets/).")


@contract_app.command("new")
def contract_new(system: Annotated[str, typer.Argument(help="System code (schemas/sources/<system>.yml).")],
                 table: Annotated[str, typer.Argument(help="Table code of that system, already loaded into raw.")],
                 force: Annotated[bool, typer.Option("--force", help="Overwrite an existing contract file.")] = False,
                 print_only: Annotated[bool, typer.Option("--print", help="Print the draft on stdout; write nothing.")]
                 = False) -> None:
    """Draft schemas/datasets/<dataset>.yml from raw.<system>__<table>: elements proposed by column names and
    sampled values, TODO where a person must decide (the contract fails validation until they do)."""
    import yaml

    from pipelines.catalog.draft import draft
    from pipelines.contract_todos import TODO

    settings = load_settings()
    try:
        d = draft(settings, system, table, force=force, write=not print_only)
    except CitylakeError as exc:
        fail("; ".join(str(exc).splitlines()))
    if print_only:
        sys.stdout.write(d.text)
        return
    out.print(f"wrote {d.path} (dataset {d.dataset})", highlight=False, soft_wrap=True)
    columns = yaml.safe_load(d.text)["columns"]
    known = sum(c["element"] != TODO for c in columns)
    out.print(f"data elements proposed for {known} of {len(columns)} columns (the reason is the comment above each; "
              "check them)", highlight=False, soft_wrap=True)
    if d.todos:
        out.print(f"{len(d.todos)} TODO to decide before the contract loads (each line has a comment with a "
                  "suggestion; STANDARDS.md has the rules):", highlight=False, soft_wrap=True)
        for problem in d.todos:
            out.print(f"  {problem.removeprefix(f'{d.path}:')}", highlight=False, soft_wrap=True)
    out.print(f"then: `citylake quality suites` and `citylake quality run {d.dataset}` publish std.{d.dataset}; "
              "`citylake catalog ls` lists it as 已编目", highlight=False, soft_wrap=True)
