"""Source registry: one ``schemas/sources/<system>.yml`` per source system, parsed into pydantic models.

Adding a source system is a YAML file and a connection, never Python. Errors name the file, the
line and what to fix; one bad file never hides the others (``load_registry`` collects them).
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines.departments import DepartmentCode
from pipelines.errors import ConfigError
from pipelines.sql_filter import check_filter

CODE_RE = re.compile(r"^[a-z][a-z0-9_]*$")
CRS = Literal["WGS-84", "CGCS2000", "GCJ-02", "BD-09"]
EXTRACT_RANGES = 2  # parallel ctid ranges of a PostgreSQL table load (two streams saturate one writer)


def check_code(value: str, what: str = "code") -> str:
    """System, table and column codes: ``^[a-z][a-z0-9_]*$`` without ``__`` (the raw-table separator)."""
    if not CODE_RE.match(value) or "__" in value:
        raise ValueError(f"{what} {value!r} must match ^[a-z][a-z0-9_]*$ and not contain '__'")
    return value


def check_encoding(value: str, where: str = "") -> str:
    """A text encoding Python can decode (``gbk``, ``gb18030``, ``big5``…), as its canonical codec name."""
    import codecs

    try:
        info = codecs.lookup(value)
    except LookupError:
        info = None
    if info is None or not getattr(info, "_is_text_encoding", True):
        raise ValueError(f"{where}encoding {value!r} is not a known text encoding (e.g. gbk, gb18030, big5)")
    return info.name


def check_zone(value: str) -> str:
    """An IANA time zone name (``Asia/Shanghai``, ``UTC``)."""
    from zoneinfo import ZoneInfo

    try:
        ZoneInfo(value)
    except (ValueError, KeyError):  # ZoneInfoNotFoundError is a KeyError
        raise ValueError(f"time_zone {value!r} is not an IANA time zone name (e.g. Asia/Shanghai, UTC)") from None
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _TableBase(_Model):
    code: str
    """Lake code of the table: the raw table is ``raw.<system>__<code>``."""
    primary_key: list[str] = Field(min_length=1)
    """Primary-key column codes (after ``columns`` mapping)."""
    columns: dict[str, str] = Field(default_factory=dict)
    """Source column name (any text, Chinese included) → column code. Unmapped names must be codes."""
    crs: CRS | None = None
    """Coordinate reference system of the table's longitude/latitude columns, if it has any."""

    @field_validator("code")
    @classmethod
    def _code(cls, v: str) -> str:
        return check_code(v, "table code")

    @field_validator("primary_key")
    @classmethod
    def _pk(cls, v: list[str]) -> list[str]:
        return [check_code(c, "primary-key column") for c in v]

    @field_validator("columns")
    @classmethod
    def _columns(cls, v: dict[str, str]) -> dict[str, str]:
        for code in v.values():
            check_code(code, "column code")
        if len(set(v.values())) != len(v):
            raise ValueError("two source columns map to the same column code")
        return v

    def column_code(self, source_name: str) -> str:
        """The lake column code of a source column; fails clearly for an unmapped non-code name."""
        if source_name in self.columns:
            return self.columns[source_name]
        lowered = source_name.lower()
        if CODE_RE.match(lowered) and "__" not in lowered and not lowered.startswith("_"):
            return lowered
        raise ConfigError(
            f"table {self.code}: source column {source_name!r} is not a valid code; "
            f"map it under 'columns:' (e.g. {source_name!r}: some_code)"
        )


class DeletionCheck(_Model):
    """A scheduled key-only comparison with the source: keys live in the lake that the source no longer has
    get deletion rows (``_deleted``), without a full refresh. Only the primary-key columns are read."""

    check: Literal["key_only"] = "key_only"
    """How the source is compared: ``key_only`` reads its primary-key columns and nothing else."""
    schedule: str
    """Cron expression (5 fields, Asia/Shanghai) or @preset, e.g. ``"0 3 * * 0"`` (weekly): the ingest run
    whose data interval holds a fire time runs the check after the table's load."""

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str) -> str:
        from croniter import croniter

        if not croniter.is_valid(v):
            raise ValueError(f"schedule {v!r} must be a 5-field cron expression or an @preset")
        return v

    def due(self, start: datetime, end: datetime) -> bool:
        """Whether the schedule fires in the data interval ``(start, end]`` (times in Asia/Shanghai)."""
        from croniter import croniter

        from pipelines.settings import TZ

        fire = croniter(self.schedule, start.astimezone(TZ)).get_next(datetime)
        return bool(fire <= end.astimezone(TZ))


class SqlTable(_TableBase):
    """A table (or view) of a relational source."""

    source: str
    """Table name at the source, exactly as the source spells it (quoted in SQL)."""
    source_schema: str | None = None
    """Schema/database at the source; None means the connection's default."""
    cursor: str | None = None
    """Incremental cursor column code (e.g. ``updated_at``); None means full refresh every run."""
    filter: str | None = None
    """Optional row filter: one boolean SQL expression over the table's own source columns (comparisons,
    AND/OR/NOT, IN-lists, LIKE, IS NULL, casts and a few pure functions; see ``pipelines.sql_filter``).
    Parsed with sqlglot when the config loads; its columns are checked against the source at ingest."""
    lookback_hours: float | None = None
    """Late-row lookback window; defaults to the system's ``lookback_hours``."""
    batch_rows: int = Field(default=100_000, ge=1000)
    """Rows per Arrow record batch while streaming."""
    deletions: DeletionCheck | None = None
    """A cursor table sees rows deleted at the source only on a full refresh; this schedules a cheap
    key-only check that records them (``citylake ingest <system> --deletions`` runs it by hand)."""
    source_encoding: str | None = None
    """MySQL-family only: the encoding of the bytes a legacy table keeps in its ``latin1`` text columns (e.g.
    ``gbk`` stored through a latin1 connection). Those columns are read as bytes and decoded as declared."""
    column_encodings: dict[str, str] = Field(default_factory=dict)
    """MySQL-family only: source column name → encoding of its bytes, for a column of any character set (or
    a binary one) that holds text in another encoding; it lands as text decoded as declared."""
    integer_columns: list[str] = Field(default_factory=list)
    """MySQL-family only: ``TINYINT(1)`` source columns that hold numbers, not booleans (a legacy status
    0–9). MySQL's ``BOOL`` is ``TINYINT(1)``, so such a column lands as boolean (values other than 0/1 null and
    counted) unless named here; named, it lands as a small integer."""

    @model_validator(mode="after")
    def _deletions_need_a_cursor(self) -> SqlTable:
        if self.deletions is not None and self.cursor is None:
            raise ValueError("deletions: a table without a cursor is fully refreshed on every run, which "
                             "records deletions already; remove 'deletions' or give a 'cursor'")
        return self

    @field_validator("filter")
    @classmethod
    def _filter(cls, v: str | None) -> str | None:
        return check_filter(v) if v is not None else None

    @field_validator("source_encoding")
    @classmethod
    def _source_encoding(cls, v: str | None) -> str | None:
        return check_encoding(v) if v is not None else None

    @field_validator("column_encodings")
    @classmethod
    def _column_encodings(cls, v: dict[str, str]) -> dict[str, str]:
        return {column: check_encoding(enc, f"column {column!r}: ") for column, enc in v.items()}


class DropTable(_TableBase):
    """A stream of files in a drop folder or S3 prefix that land in one raw table."""

    glob: str
    """File-name pattern relative to the drop location, e.g. ``hourly_*.csv``."""
    format: Literal["csv", "jsonl", "parquet", "xlsx"]
    encoding: Literal["utf-8", "utf-8-sig", "gbk", "gb18030"] = "utf-8"
    """Text encoding (CSV/JSON lines). ``utf-8`` also accepts a BOM; GB18030 is a superset of GBK."""
    delimiter: str = ","
    sheet: str | None = None
    """XLSX sheet name; None means the first sheet."""
    types: dict[str, str] = Field(default_factory=dict)
    """Column code → Arrow type (``int64``, ``float64``, ``decimal(12,2)``, ``date``, ``timestamp``,
    ``string``, ``bool``). Undeclared CSV/XLSX columns land as text, exactly as received."""


class FileDrop(_Model):
    location: str
    """Local folder (relative to the project root) or ``s3://bucket/prefix``. Read-only to the lake."""
    tables: list[DropTable] = Field(min_length=1)


class SourceSystem(_Model):
    """One source system (业务系统) of one department."""

    system: str
    """System code, e.g. ``population``."""
    name: str
    """Chinese name, e.g. 人口基础信息系统."""
    department: DepartmentCode
    """Owning department's code (schemas/departments.yml), e.g. ``11340100003001113F`` (合肥市公安局)."""
    connection: str
    """Connection id: resolved from ``CITYLAKE_CONN_<ID>``/``AIRFLOW_CONN_<ID>`` or an Airflow connection."""
    default_url: str | None = None
    """Fallback URL for the embedded demo only (a local SQLite file or folder); never holds a secret."""
    schedule: str = "0 2 * * *"
    """Cron expression, Asia/Shanghai."""
    max_connections: int = Field(default=2, ge=1, le=32)
    """Hard cap on concurrent connections to the system, counted across all its table loads: the size of
    the Airflow pool ``source__<system>``. Each table load holds ``connections_per_load`` slots (the
    PostgreSQL fast path's parallel ctid ranges, the first of which also holds the shared snapshot; the
    MySQL-family fast path's key ranges)."""
    lookback_hours: float = Field(default=24.0, ge=0)
    time_zone: str = "Asia/Shanghai"
    """The zone of the system's wall-clock date-times (MySQL DATETIME, which stores no zone): they land as
    Asia/Shanghai wall time (the lake's naive timestamps) when it is Asia/Shanghai, else as the instant
    (timestamp with zone UTC). MySQL TIMESTAMP columns are instants whatever this says."""
    tables: list[SqlTable] = Field(default_factory=list)
    drop: FileDrop | None = None

    @field_validator("system")
    @classmethod
    def _system(cls, v: str) -> str:
        return check_code(v, "system code")

    @field_validator("connection")
    @classmethod
    def _connection(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z][A-Za-z0-9_]*$", v):
            raise ValueError(f"connection id {v!r} must be letters, digits and '_'")
        return v

    @field_validator("time_zone")
    @classmethod
    def _time_zone(cls, v: str) -> str:
        return check_zone(v)

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str) -> str:
        if not (v.startswith("@") or len(v.split()) == 5):
            raise ValueError(f"schedule {v!r} must be a 5-field cron expression or an @preset")
        return v

    @field_validator("default_url")
    @classmethod
    def _no_secret(cls, v: str | None) -> str | None:
        if v and re.search(r"://[^/@]*:[^/@]*@", v):
            raise ValueError("default_url must not carry a password; use the connection id")
        return v

    @model_validator(mode="after")
    def _tables_or_drop(self) -> SourceSystem:
        if bool(self.tables) == bool(self.drop):
            raise ValueError("give either 'tables' (a relational source) or 'drop' (a file drop), not both")
        codes = [t.code for t in self.all_tables]
        dupes = {c for c in codes if codes.count(c) > 1}
        if dupes:
            raise ValueError(f"table codes repeated: {sorted(dupes)}")
        return self

    @property
    def connections_per_load(self) -> int:
        """Connections one table load opens at once, so the pool slots its task takes: ``EXTRACT_RANGES``
        parallel ranges, at most ``max_connections`` (one range needs no exported snapshot)."""
        return min(EXTRACT_RANGES, self.max_connections) if self.tables else 1

    @property
    def all_tables(self) -> list[SqlTable | DropTable]:
        return list(self.tables) if self.tables else list(self.drop.tables if self.drop else [])

    def table(self, code: str) -> SqlTable | DropTable:
        for t in self.all_tables:
            if t.code == code:
                return t
        raise ConfigError(f"system {self.system}: no table {code!r} (known: {[t.code for t in self.all_tables]})")

    def raw_table(self, code: str) -> str:
        return f"raw.{self.system}__{code}"


# --- loading with line numbers -------------------------------------------------------------------


def _line_index(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            out[path + (key.value,)] = key.start_mark.line + 1
            _line_index(value, path + (key.value,), out)
            out[path + (key.value,)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_index(item, path + (i,), out)


def _line_of(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return 1


# libyaml's parser where PyYAML was built with it (the wheels are): the same safe loader, ~10x faster, which
# a CLI load pays before its source read can start (every registry and contract file is parsed).
SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(path: Path) -> tuple[Any, dict[tuple[Any, ...], int]]:
    """The parsed YAML of ``path`` and the line of every key path in it (``("columns", 2, "source")``)."""
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=SAFE_LOADER)
        data = yaml.load(text, Loader=SAFE_LOADER)  # noqa: S506 - SAFE_LOADER is a safe loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise ConfigError(f"{path}:{line}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    except ValueError as exc:  # a date YAML recognises but the calendar lacks (2026-02-30): not a YAMLError
        bad = _bad_scalar(node)
        where = f"{path}:{bad.start_mark.line + 1}: {bad.value!r}" if bad is not None else f"{path}:1"
        raise ConfigError(f"{where}: invalid date in YAML: {exc}") from None
    lines: dict[tuple[Any, ...], int] = {}
    if node is not None:
        _line_index(node, (), lines)
    return data, lines


def _bad_scalar(node: Any) -> Any:
    """The first scalar of a composed YAML tree that its resolved tag cannot construct (an impossible date)."""
    if isinstance(node, yaml.ScalarNode):
        try:
            yaml.SafeLoader("").construct_object(node)
        except ValueError:
            return node
        return None
    children = node.value if isinstance(node, yaml.SequenceNode) else \
        [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else []
    for child in children:
        found = _bad_scalar(child)
        if found is not None:
            return found
    return None


def line_of(lines: dict[tuple[Any, ...], int], *loc: Any) -> int:
    """The line of a key path, or of its nearest parent the file spells out."""
    return _line_of(lines, loc)


def parse_yaml_model(path: Path, model: type[BaseModel], context: dict[str, Any] | None = None,
                     lines: dict[tuple[Any, ...], int] | None = None) -> Any:
    """Parse one YAML file into ``model``; raise ConfigError naming file, line and fix of every problem.

    ``context`` reaches the model's validators (what other files declare: systems, elements, code
    lists), so a wrong reference is reported with its own line among the others. ``lines``, when given,
    receives the line of every key path."""
    data, found = load_yaml(path)
    if lines is not None:
        lines.update(found)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: expected a mapping of fields ({', '.join(list(model.model_fields)[:3])}, ...)")
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise ConfigError(*(_problem(path, found, model, err) for err in exc.errors())) from None


def _problem(path: Path, lines: dict[tuple[Any, ...], int], model: type[BaseModel], err: Any) -> str:
    """One pydantic error as ``file:line: field.path: message``."""
    loc = tuple(err["loc"])
    where = ".".join(str(p) for p in loc) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = f"unknown field; allowed fields: {', '.join(_allowed(model, loc[:-1]))}"
    elif err["type"] == "missing":
        msg = "required field is missing"
    return f"{path}:{_line_of(lines, loc)}: {where}: {msg}"


def _allowed(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if hasattr(current, "model_fields") else None
        if field is None:
            break
        ann = field.annotation
        for arg in getattr(ann, "__args__", ()) or (ann,):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                current = arg
                break
            for sub in getattr(arg, "__args__", ()):
                if isinstance(sub, type) and issubclass(sub, BaseModel):
                    current = sub
    return sorted(current.model_fields) if hasattr(current, "model_fields") else []


def load_system(path: Path, departments: dict[str, Any] | None = None) -> SourceSystem:
    """One registry file; its ``department`` is checked against ``departments`` (default: the project's
    schemas/departments.yml)."""
    system: SourceSystem = parse_yaml_model(path, SourceSystem, {"departments": departments})
    if system.system != path.stem:
        raise ConfigError(f"{path}:1: system code {system.system!r} must equal the file name {path.stem!r}")
    return system


def load_registry(registry_dir: Path, departments: dict[str, Any] | None = None,
                  ) -> tuple[dict[str, SourceSystem], dict[Path, ConfigError]]:
    """Every valid system plus, separately, the error of each invalid file (others still load).

    Departments are checked against ``departments`` (default: the project's ``schemas/departments.yml``
    under the settings root); when that file itself is broken, every registry file carries its error (none
    loads unchecked)."""
    from pipelines.departments import load_departments

    systems: dict[str, SourceSystem] = {}
    errors: dict[Path, ConfigError] = {}
    paths = sorted(registry_dir.glob("*.yml"))
    try:
        departments = load_departments() if departments is None else departments
    except ConfigError as exc:
        return systems, {path: exc for path in paths}
    for path in paths:
        try:
            systems[path.stem] = load_system(path, departments)
        except ConfigError as exc:
            errors[path] = exc
    return systems, errors


def get_system(registry_dir: Path, system: str) -> SourceSystem:
    path = registry_dir / f"{system}.yml"
    if not path.exists():
        known = sorted(p.stem for p in registry_dir.glob("*.yml"))
        raise ConfigError(f"no source system {system!r}: {path} does not exist (known: {', '.join(known)})")
    return load_system(path)
