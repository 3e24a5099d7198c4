"""``citylake platform``: what a deployment's init service runs (docker-compose.yml), and sample sources."""

from __future__ import annotations

import typer

platform_app = typer.Typer(no_args_is_help=True, help="The production platform: init steps and sample source servers.")


@platform_app.command("init")
def init() -> None:
    """Idempotent set-up after ``airflow db migrate``: Airflow pools from the registry, the catalog's
    namespaces, and a writable-warehouse probe; one line per step."""
    from pipelines.console import fail, out
    from pipelines.errors import CitylakeError
    from pipelines.platform.init import run_init

    try:
        run_init(echo=lambda line: out.print(line, highlight=False, soft_wrap=True))
    except CitylakeError as exc:
        fail(f"platform init: {exc}")


@platform_app.command("seed-sources")
def seed_sources(
    postgres: str = typer.Option(..., envvar="CITYLAKE_SEED_POSTGRES_URL", show_envvar=True,
                                 help="Admin SQLAlchemy URL of the PostgreSQL server (any database of it)."),
    mysql: str = typer.Option(..., envvar="CITYLAKE_SEED_MYSQL_URL", show_envvar=True,
                              help="Admin SQLAlchemy URL of the MariaDB/MySQL server (database part ignored)."),
    scale: float = typer.Option(0.2, help="Size of the synthetic city (1.0 ≈ 20k residents)."),
    seed_value: int = typer.Option(20261124, "--seed", help="Random seed (same seed, same city)."),
    prefix: str = typer.Option("", help="Prefix of the per-system database names (<prefix><system>)."),
    reader: str | None = typer.Option(None, help="Account granted SELECT on every seeded database (the lake's)."),
    data_dir: str | None = typer.Option(None, help="Keep the seeded city here (file drops, manifest) instead of "
                                                   "a temporary folder."),
    keep_existing: bool = typer.Option(False, "--keep-existing",
                                       help="Leave a system whose tables are all present untouched."),
) -> None:
    """Seed the synthetic city and copy its SQL systems into sample source servers, one database per system
    (population, social_insurance, housing_fund on PostgreSQL; enterprise, credit, poi on MariaDB)."""
    import tempfile
    from pathlib import Path

    from pipelines.connections import describe
    from pipelines.console import err, fail, out
    from pipelines.errors import CitylakeError
    from pipelines.seed import seed_city
    from pipelines.seed.servers import Server, seed_servers

    servers: dict[Server, str] = {"postgres": postgres, "mysql": mysql}
    with tempfile.TemporaryDirectory(prefix="citylake-seed-") as tmp:
        base = Path(data_dir) if data_dir else Path(tmp)
        try:
            if keep_existing and (base / "seed_manifest.json").is_file():
                out.print(f"seed: keeping the city already seeded in {base}")
            else:
                with err.status("seeding the synthetic city…") as status:
                    seed_city(base, scale=scale, seed=seed_value, progress=lambda m: status.update(m))
            seeded = seed_servers(base / "sources", servers, prefix=prefix, reader=reader,
                                  keep_existing=keep_existing, progress=lambda m: err.print(m, highlight=False))
        except CitylakeError as exc:
            fail(f"platform seed-sources: {exc}")
    for s in seeded:
        rows = "kept (already present)" if s.skipped else ", ".join(f"{t} {n:,} rows" for t, n in s.tables.items())
        out.print(f"{s.system}: {describe(s.url)} — {rows}", highlight=False, soft_wrap=True)
