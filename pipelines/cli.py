"""``citylake``: the same functions the DAGs run, without Airflow. Errors print as one line."""

from __future__ import annotations

import gc
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipelines.catalog.cli import catalog_app
from pipelines.catalog.contract_cli import contract_app
from pipelines.catalog.request_cli import request_app
from pipelines.console import err, fail, out, wide
from pipelines.demo import airflow_env_command
from pipelines.errors import CitylakeError
from pipelines.platform.cli import platform_app
from pipelines.publish.cli import open_app
from pipelines.report.cli import report as report_command
from pipelines.settings import TZ, load_settings
from pipelines.share.cli import share_app

app = typer.Typer(add_completion=False, no_args_is_help=True, help="citylake: the Hefei city data lake.")
sources_app = typer.Typer(no_args_is_help=True, help="The source registry (schemas/sources/).")
lake_app = typer.Typer(no_args_is_help=True, help="Tables in the lake.")
quality_app = typer.Typer(no_args_is_help=True, help="Standardize, validate and publish; score against the seed.")
app.add_typer(sources_app, name="sources")
app.add_typer(lake_app, name="lake")
app.add_typer(quality_app, name="quality")
app.add_typer(contract_app, name="contract")
app.add_typer(catalog_app, name="catalog", help="The resource catalog (数据资源一本账): ls, show, register.")
app.add_typer(request_app, name="request", help="Requests for data (开放需求受理反馈): add, ls, show, answer, import.")
app.add_typer(open_app, name="open", help="The open-data release (开放数据): release, ls.")
app.add_typer(share_app, name="share", help="Departmental sharing (数据共享): grants, ls, deliver, audit, request.")
app.add_typer(platform_app, name="platform")


@app.callback()
def _logging(log_json: Annotated[bool, typer.Option(
        "--log-json", help="Log as JSON lines on stderr (run id, dataset, batch, table); also CITYLAKE_LOG_FORMAT=json.")
        ] = False) -> None:
    from pipelines.logs import configure_logging

    configure_logging(True if log_json else None)


@app.command("runs")
def runs_command(since: Annotated[str | None, typer.Option(help="Runs started at or after this time (2026-11-20, "
                                                                "2026-11-20T08:00; Asia/Shanghai unless zoned).")] = None,
                 kind: Annotated[str | None, typer.Option(help="ingest, publish, curate, share, release or maintenance.")] = None,
                 limit: Annotated[int, typer.Option(help="Rows to show (newest first).")] = 50,
                 as_json: Annotated[bool, typer.Option("--json", help="Print only JSON on stdout.")] = False) -> None:
    """The run ledger (meta.runs): what ran, rows in and out, seconds, snapshots, status, error."""
    from pipelines.lake.catalog import get_catalog
    from pipelines.lake.runs import KINDS, read_runs

    if kind is not None and kind not in KINDS:
        raise CitylakeError(f"runs: unknown --kind {kind!r} (one of {', '.join(KINDS)})")
    rows = read_runs(get_catalog(load_settings()), since=_parse_when(since, "--since"), kind=kind)[:limit]
    if as_json:
        sys.stdout.write(json.dumps(rows, ensure_ascii=False, indent=2, default=_cell) + "\n")
        return
    table = Table("started", "kind", "target", "status", "rows in", "rows out", "s", "snapshot", "run id", "error")
    for r in rows:
        table.add_row(_cell(r["started_at"])[:19], r["kind"], r["target"], r["status"], _cell(r["rows_in"]),
                      _cell(r["rows_out"]), _cell(r["seconds"]), _cell(r["snapshot_after"]), r["run_id"],
                      _cell(r["error"]))
    wide(10).print(table)
app.command("report")(report_command)
app.command("airflow-env", help="Print the demo's Airflow environment: eval \"$(.venv/bin/citylake airflow-env)\".")(airflow_env_command)


def _print_wide(table: Table, columns: int) -> None:
    # Piped output has no terminal width: don't squeeze the columns into 80.
    wide(columns).print(table)


EXIT_FILES_REJECTED = 3
"""`citylake ingest` exit code when the load landed but rejected some drop files (1: a table failed)."""


@contextmanager
def _quiet_gc() -> Iterator[None]:
    """Heavy imports without the cyclic collector, then what they built frozen out of its sight: importing the
    lake's libraries (pyiceberg, pyarrow, pandas, SQLAlchemy) leaves ~180 k long-lived objects, and the full
    collections that growth triggers, and every later one that walks them again, cost a load ~0.5 s on one core."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def _progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), console=err, transient=False)


def _parse_when(value: str | None, flag: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        try:
            d = date.fromisoformat(value)
        except ValueError:
            fail(f"{flag} {value!r}: expected a date (2026-11-01) or a time (2026-11-01T08:00:00+08:00)")
        parsed = datetime(d.year, d.month, d.day)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=TZ)


@app.command()
def seed(scale: Annotated[float, typer.Option(help="Size of the synthetic city (1.0 ≈ 20k residents).")] = 1.0,
         seed_value: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same city).")] = 20261124) -> None:
    """Build the synthetic Hefei city: source databases, file drops and the defect manifest."""
    from pipelines.seed import seed_city

    settings = load_settings()
    with err.status("seeding the synthetic city…") as status:
        summary = seed_city(settings.data_dir, scale=scale, seed=seed_value, progress=lambda m: status.update(m))
    t = Table("system", "table", "rows", title="synthetic city")
    for system, tables in summary["systems"].items():
        for table, rows in tables.items():
            t.add_row(system, table, f"{rows:,}")
    for system, n in summary.get("files", {}).items():
        t.add_row(system, "(files)", f"{n:,}")
    out.print(t)
    out.print(f"manifest: {summary['manifest']}")


@app.command()
def ingest(system: Annotated[str, typer.Argument(help="System code, e.g. population.")],
           table: Annotated[list[str] | None, typer.Option("--table", "-t", help="Only this table (repeatable).")] = None,
           full_refresh: Annotated[bool, typer.Option("--full-refresh", help="Reload everything; record deletions.")] = False,
           since: Annotated[str | None, typer.Option(help="Backfill from this cursor value (inclusive).")] = None,
           until: Annotated[str | None, typer.Option(help="Backfill up to this cursor value (exclusive).")] = None,
           batch_id: Annotated[str | None, typer.Option(help="Batch id (re-running one replaces it).")] = None,
           deletions: Annotated[bool, typer.Option(
               "--deletions", help="Key-only deletion check: read only primary keys, record keys gone.")] = False,
           ) -> None:
    """Load a source system's tables into the raw zone (what the ingest DAG runs).

    Exit code 1 when a table failed, 3 when drop files were rejected (they are listed and copied aside).
    """
    from pipelines.registry import SqlTable, get_system

    if (since is None) != (until is None):
        fail("--since and --until go together (a backfill window)")
    if full_refresh and since:
        fail("--full-refresh and --since/--until exclude each other")
    if deletions and (full_refresh or since):
        fail("--deletions runs alone (not with --full-refresh or --since/--until)")
    settings = load_settings()
    try:
        spec = get_system(settings.registry_dir, system)
    except CitylakeError as exc:
        fail(str(exc))
    mode = "deletions" if deletions else "full" if full_refresh else ("backfill" if since else "incremental")
    # --deletions without --table: the SQL tables (a file drop has no whole key set to compare with)
    codes = table or [t.code for t in spec.all_tables if not deletions or isinstance(t, SqlTable)]
    if not codes:
        fail(f"system {system}: --deletions needs SQL tables; {system} is a file drop")
    from pipelines.extract import read_ahead

    # The first table's whole read starts now, so the source streams while the lake's libraries load (~2 s).
    started = read_ahead.start(spec, codes[0], settings, mode)
    with _quiet_gc():
        from pipelines.ingest import ingest_system
    failures: list[str] = []
    rejected: list[str] = []
    t = Table("table", "mode", "extracted", "written", "unchanged", "deleted", "watermark", "seconds",
              title=f"ingest {system}")
    with _progress() as progress:
        task = progress.add_task(f"{system}", total=len(codes))
        for _code, res in ingest_system(spec, codes, settings=settings, mode=mode,
                                       since=_parse_when(since, "--since"), until=_parse_when(until, "--until"),
                                       batch_id=batch_id, read_ahead={codes[0]: started} if started else None):
            progress.advance(task)
            if isinstance(res, BaseException):
                failures.append(str(res))
                err.print(f"[bold red]error:[/] {res}", highlight=False, soft_wrap=True)
                continue
            t.add_row(res.identifier, res.mode, f"{res.rows_extracted:,}", f"{res.rows_written:,}",
                      f"{res.rows_unchanged:,}", f"{res.rows_deleted:,}", res.watermark or "", f"{res.seconds:.1f}")
            shown = res.to_dict()  # drop file names masked: people name files after the person
            for rej in shown["files_rejected"]:
                rejected.append(rej["file"])
                err.print(f"[yellow]rejected:[/] {res.identifier} {rej['file']}: {rej['reason']} → {rej['copied_to']}",
                          highlight=False, soft_wrap=True)
            for rep in shown["files_repeated"]:
                err.print(f"repeat: {res.identifier} {rep['file']} has the same bytes as {rep['of']}; not loaded",
                          highlight=False, soft_wrap=True)
    out.print(t)
    if failures:
        raise typer.Exit(1)
    if rejected:
        err.print(f"{len(rejected)} file(s) rejected (copied aside with their reasons): {', '.join(rejected)}",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_FILES_REJECTED)


@app.command()
def curate(dataset: Annotated[str, typer.Argument(help="Curated dataset code, or 'all' (in input order).")],
           run_id: Annotated[str | None, typer.Option(help="Run again as this run id, replacing what it recorded "
                                                           "(default: a new run id).")] = None,
           reference_date: Annotated[str | None, typer.Option(help="The run's today (default: today).")] = None,
           release: Annotated[str | None, typer.Option(help="Publish a held build anyway, for this reason: passing "
                                                           "rows published, failing ones quarantined, recorded "
                                                           "'released' (like quality release).")] = None,
           ) -> None:
    """Build curated datasets from their inputs' current snapshots through the quality gate (what curate__<domain> runs).

    Exit code 1 when a build was held or failed (the others still build); a dataset waiting for an input not yet
    in the lake is listed as waiting (exit 0).
    """
    from pipelines.curate.plan import build_order, curated_specs
    from pipelines.curate.runner import build_curated
    from pipelines.lake.meta import new_run_id
    from pipelines.quality.gate import QualityGateError

    settings = load_settings()
    ref = date.fromisoformat(reference_date) if reference_date else None
    if dataset == "all":
        specs = curated_specs(settings.root / "schemas" / "curated")
        names = build_order({d: s["inputs"] for d, s in specs.items()})
    else:
        names = [dataset]
    run_id = run_id or new_run_id()
    t = Table("dataset", "status", "build", "rows", "quarantined", "snapshot", title=f"curate (run {run_id})")
    failed = False
    for name in names:
        try:
            r = build_curated(name, settings=settings, run_id=run_id, reference_date=ref, release=release)
            if r.status == "waiting":
                t.add_row(name, "waiting", "", "", "", "")
                err.print(f"waiting: curated.{name} needs {', '.join(r.waiting_for)}, not in the lake yet",
                          highlight=False, soft_wrap=True)
                continue
            t.add_row(name, r.status, r.build_id, f"{r.rows:,}", f"{r.quarantined:,}", str(r.snapshot_id or ""))
        except QualityGateError as exc:
            failed = True
            t.add_row(name, "held", "", "", "", "")
            err.print(f"[bold red]held:[/] {exc}", highlight=False, soft_wrap=True)
        except CitylakeError as exc:
            if dataset != "all":
                fail(str(exc))
            failed = True
            t.add_row(name, "failed", "", "", "", "")
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    _print_wide(t, 6)
    if failed:
        raise typer.Exit(1)


@app.command()
def demo(scale: Annotated[float, typer.Option(help="Size of the synthetic city.")] = 1.0) -> None:
    """Seed the city and run every ingest DAG through real Airflow; print a summary."""
    from pipelines.demo import run_demo

    try:
        run_demo(scale=scale, console=out)
    except CitylakeError as exc:
        fail(str(exc))


@sources_app.command("ls")
def sources_ls() -> None:
    """Every registered source system and its tables."""
    from pipelines.config import load_departments
    from pipelines.departments import department_name
    from pipelines.registry import load_registry

    settings = load_settings()
    try:
        departments = load_departments(settings)
    except CitylakeError as broken:
        fail(str(broken))
    systems, errors = load_registry(settings.registry_dir, departments)
    t = Table("system", "名称", "部门", "schedule", "tables", "kind")
    for s in systems.values():
        kind = "drop" if s.drop else "sql"
        t.add_row(s.system, s.name, department_name(departments, s.department), s.schedule,
                  ", ".join(x.code for x in s.all_tables), kind)
    _print_wide(t, 6)
    for exc in errors.values():
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    if errors:
        raise typer.Exit(1)


@lake_app.command("ls")
def lake_ls(as_json: Annotated[bool, typer.Option("--json", help="Print only JSON on stdout.")] = False) -> None:
    """Every lake table: rows, snapshot id, last watermark, last commit time."""
    from pipelines.lake.inspect import list_tables

    rows = list_tables(load_settings())
    if as_json:
        sys.stdout.write(json.dumps(rows, ensure_ascii=False, indent=2) + "\n")
        return
    t = Table("table", "rows", "snapshot_id", "watermark", "committed_at")
    for r in rows:
        t.add_row(r["table"], f"{r['rows']:,}", str(r["snapshot_id"] or ""), r["watermark"] or "", r["committed_at"] or "")
    out.print(t)  # a TableConsole: full names piped or on a narrow terminal


@lake_app.command("show")
def lake_show(table: Annotated[str, typer.Argument(help="e.g. raw.population__person")],
              limit: Annotated[int, typer.Option(help="Rows to show.")] = 20,
              unmasked: Annotated[bool, typer.Option("--unmasked", help="Show personal values in clear.")] = False,
              as_of: Annotated[str | None, typer.Option(
                  "--as-of", help="Time travel: a time (2026-11-01, 20261101, 2026-11-01T08:00:00; Asia/Shanghai "
                                  "unless it says its zone) or a snapshot id (snapshot:<id>, or any other "
                                  "all-digit value: 8 digits are a date).")] = None,
              where: Annotated[str | None, typer.Option(
                  "--where", help="Only rows where this condition holds, e.g. \"sex_code = '1' AND birth_date >= "
                                  "'1990-01-01'\" (one predicate over the table's columns, as a registry filter). "
                                  "It is evaluated on the values as shown: on masked values unless --unmasked.")] = None,
              ) -> None:
    """The first rows of a lake table (personal values masked unless --unmasked)."""
    from pyiceberg.exceptions import NoSuchTableError

    from pipelines.lake.inspect import show

    when: int | datetime | None = None
    if as_of is not None:
        text = as_of.strip()
        if text.lower().startswith("snapshot:") and text[9:].strip().isdigit():
            when = int(text[9:])
        elif text.isdigit() and len(text) != 8:  # a snapshot id; YYYYMMDD is a date (fromisoformat reads it)
            when = int(text)
        else:
            when = _parse_when(text, "--as-of")
    try:
        if where is not None:
            from pipelines.lake.query import show_where

            columns, rows, warning = show_where(table, where, limit, load_settings(), unmasked=unmasked, as_of=when)
        else:
            columns, rows, warning = show(table, limit, load_settings(), unmasked=unmasked, as_of=when)
    except NoSuchTableError:
        fail(f"no table {table!r} in the lake (see `citylake lake ls`)")
    except CitylakeError as exc:
        fail(str(exc))
    if warning:
        err.print(f"[bold yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    t = Table(*columns)
    for row in rows:
        t.add_row(*[_cell(row[c]) for c in columns])
    _print_wide(t, len(columns))


@app.command("sql")
def sql_command(query: Annotated[str, typer.Argument(help="One read-only query over lake tables by name, e.g. "
                                                          "\"SELECT sex_code, count(*) FROM std.person GROUP BY 1\".")],
                fmt: Annotated[str | None, typer.Option(
                    "--format", help="table, csv or json (default: table on a terminal, csv when piped).")] = None,
                limit: Annotated[int | None, typer.Option(
                    help="At most this many rows (default 1000 for a table, all for csv/json; 0: all).")] = None,
                unmasked: Annotated[bool, typer.Option(
                    "--unmasked", help="Read personal values in clear (said on stderr).")] = False,
                ) -> None:
    """Read-only DuckDB SQL over lake tables (raw.<system>__<table>, std.<ds>, curated.<ds>, meta.<t>,
    quarantine.<ds>), streamed through the lake's scan. Personal values are masked in the tables the query
    reads, before it runs, unless --unmasked."""
    from pipelines.lake.query import QueryError, run_sql

    fmt = fmt or ("table" if out.is_terminal else "csv")
    if fmt not in ("table", "csv", "json"):
        fail(f"--format {fmt!r}: expected table, csv or json")
    if limit is None:
        limit = 1000 if fmt == "table" else 0
    if limit < 0:
        fail("--limit must be 0 (all) or more")
    if unmasked:
        err.print("[bold yellow]unmasked:[/] personal values are shown in clear (--unmasked)", highlight=False,
                  soft_wrap=True)
    try:
        with run_sql(query, load_settings(), unmasked=unmasked) as result:  # closed before exit
            if result.warning:
                err.print(f"[bold yellow]warning:[/] {result.warning}", highlight=False, soft_wrap=True)
            columns = list(result.relation.columns)
            rows = _Rows(result.batches(), limit)
            if fmt == "table":
                t = Table(*columns)
                for row in rows:
                    t.add_row(*[_cell(v) for v in row])
                _print_wide(t, len(columns))
            elif fmt == "csv":
                import csv

                writer = csv.writer(sys.stdout, lineterminator="\n")
                writer.writerow(columns)
                for row in rows:
                    writer.writerow([_cell(v) for v in row])
            else:
                shown = 0
                sys.stdout.write("[")
                for row in rows:
                    sys.stdout.write(("," if shown else "") + "\n" + json.dumps(
                        {c: _json_value(v) for c, v in zip(columns, row, strict=True)}, ensure_ascii=False))
                    shown += 1
                sys.stdout.write("\n]\n" if shown else "]\n")
    except QueryError as exc:
        fail(str(exc))
    if rows.cut:
        err.print(f"note: only the first {limit:,} rows shown (--limit; 0 for all)", highlight=False, soft_wrap=True)


class _Rows:
    """Rows of a query's record batches, at most ``limit`` (0: all); ``cut`` says more were there."""

    def __init__(self, batches: Any, limit: int) -> None:
        self.batches, self.limit, self.cut = batches, limit, False

    def __iter__(self) -> Any:
        n = 0
        for batch in self.batches:
            columns = [c.to_pylist() for c in batch.columns]
            for row in zip(*columns, strict=True):
                if self.limit and n == self.limit:
                    self.cut = True
                    return
                n += 1
                yield row


def _json_value(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.astimezone(TZ).isoformat() if v.tzinfo else v.isoformat()
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    if isinstance(v, dict):
        return {str(k): _json_value(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_json_value(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)  # Decimal (exact, as text), time, UUID, interval


@lake_app.command("history")
def lake_history(table: Annotated[str, typer.Argument(help="e.g. std.person")],
                 as_json: Annotated[bool, typer.Option("--json", help="Print only JSON on stdout.")] = False) -> None:
    """A table's kept snapshots, oldest first: id, time (Asia/Shanghai), operation, rows added/deleted, batch,
    maintenance tag (time travel: `citylake lake show <table> --as-of <id|time>`)."""
    from pyiceberg.exceptions import NoSuchTableError

    from pipelines.lake.inspect import history

    try:
        rows = history(table, load_settings())
    except NoSuchTableError:
        fail(f"no table {table!r} in the lake (see `citylake lake ls`)")
    if as_json:
        sys.stdout.write(json.dumps(rows, ensure_ascii=False, indent=2) + "\n")
        return
    t = Table("snapshot_id", "committed_at", "operation", "added", "deleted", "rows", "batch", "maintenance", "")
    for r in rows:
        batch = r["batch_id"] or (", ".join(r["batches"]) if r["batches"] else None) or r["build_id"] or ""
        t.add_row(str(r["snapshot_id"]), r["committed_at"], r["operation"] or "", _count(r["added_rows"]),
                  _count(r["deleted_rows"]), _count(r["total_rows"]), batch, r["maintenance"] or "",
                  "current" if r["current"] else "")
    _print_wide(t, 9)


def _count(n: int | None) -> str:
    return "" if n is None else f"{n:,}"


@lake_app.command("maintain")
def lake_maintain(tables: Annotated[list[str] | None, typer.Argument(help="Tables (default: every table).")] = None,
                  dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would go; change nothing.")] = False,
                  as_json: Annotated[bool, typer.Option("--json", help="Print only JSON on stdout.")] = False) -> None:
    """Lake maintenance, as the weekly `maintain__lake` DAG runs it: compact small files (std, meta,
    quarantine), expire snapshots past CITYLAKE_SNAPSHOT_RETENTION_DAYS except those still needed, delete
    unreferenced files older than the orphan window. Exit 1 when a table failed."""
    from pipelines.lake.maintenance import maintain, orphan_window

    reports = maintain(load_settings(), tables or None, dry_run=dry_run)
    if as_json:
        sys.stdout.write(json.dumps([r.to_dict() for r in reports], ensure_ascii=False, indent=2) + "\n")
    else:
        t = Table("table", "compacted", "expired", "kept (old)", "orphans deleted", "young orphans", "note",
                  title=("dry run: nothing changed; " if dry_run else "") + f"orphan window {orphan_window()}")
        for r in reports:
            kept = ", ".join(f"{why} {n}" for why, n in sorted(r.kept.items()))
            t.add_row(r.table, f"{r.compacted_files} → {r.compacted_into}" if r.compacted_files else "",
                      _count(r.expired) if r.expired else "", kept,
                      f"{r.orphans:,} ({r.orphan_bytes:,} B)" if r.orphans else "",
                      _count(r.young_orphans) if r.young_orphans else "", r.skipped or "")
        _print_wide(t, 7)
    if any(r.skipped and r.skipped.startswith("failed") for r in reports):
        raise typer.Exit(1)


@quality_app.command("run")
def quality_run(dataset: Annotated[str, typer.Argument(help="Dataset code, or 'all'.")],
                reference_date: Annotated[str | None, typer.Option(help="The run's today (default: today).")] = None,
                retry_held: Annotated[bool, typer.Option("--retry-held",
                                                         help="Validate the held batches again too.")] = False,
                run_id: Annotated[str | None, typer.Option(help="Run again as this run id, replacing what it "
                                                                "recorded (default: a new run id).")] = None,
                ) -> None:
    """Standardize → validate → publish the new raw batches of a dataset (what the DAG runs)."""
    from pipelines.config import load_config
    from pipelines.lake.meta import new_run_id
    from pipelines.quality.consistency import run_consistency
    from pipelines.quality.gate import QualityGateError, run_quality

    settings = load_settings()
    ref = date.fromisoformat(reference_date) if reference_date else None
    names = sorted(load_config(settings)[2]) if dataset == "all" else [dataset]
    run_id = run_id or new_run_id()  # one per invocation: its meta rows are told apart from any other run's
    t = Table("dataset", "status", "extracted", "published", "quarantined", "held", "warned",
              title=f"quality (run {run_id})")
    failed = False
    for name in names:
        try:
            r = run_quality(name, settings=settings, reference_date=ref, retry_held=retry_held, run_id=run_id)
            t.add_row(name, r.status, f"{r.extracted:,}", f"{r.published:,}", f"{r.quarantined:,}", f"{r.held:,}",
                      f"{r.warned:,}")
        except QualityGateError as exc:
            failed = True
            t.add_row(name, "held", "", "", "", "", "")
            err.print(f"[bold red]held:[/] {exc}", highlight=False, soft_wrap=True)
        except CitylakeError as exc:
            fail(str(exc))
    out.print(t)
    if dataset == "all":
        c = Table("element", "authority", "copy", "compared", "conflicts", "rate", title="一数一源 consistency")
        blind = []
        for s in run_consistency(settings=settings, run_id=run_id):
            # 0 compared says nothing about consistency: a warning, as the report shows it, never 0.00 %
            rate = f"{s['rate']:.2%}" if s["compared"] else "[bold yellow]0 条可比[/]"
            c.add_row(s["element"], s["authoritative_system"], f"{s['other_system']}.{s['other_table']}",
                      f"{s['compared']:,}", f"{s['conflicts']:,}", rate)
            if not s["compared"]:
                blind.append(f"{s['other_system']}.{s['other_table']}")
        out.print(c)
        for copy in blind:
            err.print(f"[bold yellow]warning:[/] {copy}: 0 条可比 — no row matched the authority's keys; check the "
                      "copy's key format and scope", highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


@quality_app.command("held")
def quality_held() -> None:
    """The held batches of every dataset: what blocked them, and how to act."""
    from pipelines.config import load_config
    from pipelines.lake.catalog import get_catalog
    from pipelines.quality.gate import batch_status

    settings = load_settings()
    catalog = get_catalog(settings)
    t = Table("dataset", "raw batch", "run", "rows", "blocking rules", title="held batches")
    n = 0
    for name in sorted(load_config(settings)[2]):
        for batch, row in sorted(batch_status(catalog, name).items()):
            if row["status"] == "held":
                n += 1
                rules = "; ".join(f"{f['rule']} {f['failed']:,}/{f['evaluated']:,}" for f in json.loads(row["detail"]))
                t.add_row(name, batch, row["run_id"], f"{row['extracted']:,}", rules)
    _print_wide(t, 8)
    if n:
        out.print("fix the source or the standard, then `citylake quality run <dataset> --retry-held`; or publish "
                  "what passes with `citylake quality release <dataset> --reason ...`")


@quality_app.command("release")
def quality_release(dataset: Annotated[str, typer.Argument(help="Dataset code.")],
                    reason: Annotated[str, typer.Option(help="Why (recorded in meta.batches).")],
                    reference_date: Annotated[str | None, typer.Option(help="The run's today.")] = None) -> None:
    """Publish a dataset's held batches anyway: passing rows to std, every failing row to quarantine."""
    from pipelines.quality.gate import run_quality

    ref = date.fromisoformat(reference_date) if reference_date else None
    try:
        r = run_quality(dataset, settings=load_settings(), reference_date=ref, release=reason)
    except CitylakeError as exc:
        fail(str(exc))
    out.print(f"released {len(r.batches)} batch(es) of {dataset}: {r.published:,} published, "
              f"{r.quarantined:,} quarantined (std snapshot {r.std_snapshot}, run {r.run_id})")


@quality_app.command("docs")
def quality_docs() -> None:
    """Build GX Data Docs (suites and every kept validation result, keys masked) for engineers."""
    from pipelines.quality.docs import build_data_docs

    try:
        built = build_data_docs(load_settings())
    except CitylakeError as exc:
        fail(str(exc))
    out.print(f"GX Data Docs: {built.suites} suites, {built.total_results} validation results "
              f"({built.new_results} new) → {built.index}"
              + ("" if built.vendored else " (pages load scripts from public CDNs: run `citylake quality docs-assets`)"))


@quality_app.command("docs-assets")
def quality_docs_assets(
    registry: Annotated[str | None, typer.Option(help="npm registry or mirror (default: $NPM_CONFIG_REGISTRY or "
                                                      "registry.npmjs.org).")] = None,
) -> None:
    """Fetch the scripts and styles GX Data Docs load from CDNs (pinned, sha512-checked) so the pages work offline."""
    from pipelines.quality.docs_assets import fetch_assets

    try:
        where = fetch_assets(registry=registry)
    except CitylakeError as exc:
        fail(str(exc))
    out.print(f"Data Docs assets ready in {where}")


@quality_app.command("suites")
def quality_suites() -> None:
    """Regenerate the GX suites (expectations/<dataset>.json) from the standards and the std and curated
    contracts."""
    from pipelines.config import load_all
    from pipelines.quality.suites import write_suites

    settings = load_settings()
    config = load_all(settings)
    for path in write_suites(settings.root / "expectations", {**config.contracts, **config.curated},
                             config.standards):
        out.print(f"wrote {path}")


@quality_app.command("score")
def quality_score(as_json: Annotated[bool, typer.Option("--json", help="Print only JSON on stdout.")] = False) -> None:
    """Recall and precision per injected defect type against data/seed_manifest.json."""
    from pipelines.quality.score import score

    result = score(load_settings())
    if as_json:
        sys.stdout.write(json.dumps(result, ensure_ascii=False, indent=2) + "\n")
        return
    t = Table("defect", "truth", "found", "recall", "precision", title=f"score vs seed ({result['reference_date']})")
    for r in result["defects"]:
        t.add_row(r["defect"], str(r["truth"]), str(r["found"]), f"{r['recall']:.1%}", f"{r['precision']:.1%}")
    out.print(t)
    out.print(f"benign variants flagged: {len(result['benign_flagged'])}")


def _cell(v: Any) -> str:
    if isinstance(v, datetime):
        return v.astimezone(TZ).isoformat()
    return "" if v is None else str(v)


def main() -> None:
    try:
        app()
    except CitylakeError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
