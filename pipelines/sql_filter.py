"""The registry's table ``filter``: one boolean expression over the table's own columns, nothing else.

The filter is parsed with sqlglot, never pasted: it must be a single predicate built from columns,
literals, comparisons, AND/OR/NOT, IN-lists, BETWEEN, LIKE, IS [NOT] NULL, arithmetic, CASE, casts to
built-in scalar types and a small allowlist of side-effect-free functions. A cast to any other type
(``regclass``, ``regprocedure``, a domain or user-defined type) is refused: in PostgreSQL those casts run
lookups or user functions. Subqueries, other functions (``pg_sleep``), comments,
parameters, several statements, DDL/DML and set operations are refused when the config loads. At
ingest the columns it names are checked against the source and the checked tree is rendered for the
source's dialect with every column quoted as the source spells it, so ``1=1) OR (1=1`` cannot escape
the parentheses it is wrapped in.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

from pipelines.errors import ConfigError

if TYPE_CHECKING:
    from sqlglot import exp

# sqlglot is imported on first use (it takes ~0.4 s): the DAG factory validates the registry at parse
# time, and a registry without filters must not pay for it.
_STRUCTURE = (
    "Column", "Identifier", "Literal", "Boolean", "Null", "Paren", "Tuple", "Neg", "Not", "And", "Or", "Xor",
    "EQ", "NEQ", "GT", "GTE", "LT", "LTE", "NullSafeEQ", "NullSafeNEQ", "Is", "In", "Between", "Like", "ILike",
    "Escape", "Add", "Sub", "Mul", "Div", "Mod", "DPipe", "Case", "If", "Cast", "TryCast", "DataType",
    "DataTypeParam", "Interval", "Var",
)
_FUNCTIONS = (
    "Coalesce", "Nullif", "Lower", "Upper", "Trim", "Length", "Substring", "Concat", "Abs", "Round",
    "CurrentDate", "CurrentTimestamp", "CurrentTime", "Date", "TsOrDsToDate", "Extract", "DateTrunc",
    "TimestampTrunc",
)


@cache
def _allowed_nodes() -> tuple[type, ...]:
    from sqlglot import exp

    return tuple(getattr(exp, name) for name in _STRUCTURE + _FUNCTIONS)


# Casts only to these sqlglot type kinds: PostgreSQL's built-in scalar types (and MySQL's spellings of
# them), whose input functions are pure; reg* types, domains and user-defined types can run functions.
_CAST_TYPES = (
    "SMALLINT", "TINYINT", "INT", "BIGINT", "UINT", "UBIGINT", "DECIMAL", "FLOAT", "DOUBLE", "TEXT", "VARCHAR",
    "NVARCHAR", "CHAR", "NCHAR", "BPCHAR", "DATE", "TIME", "TIMESTAMP", "TIMESTAMPTZ", "DATETIME", "BOOLEAN",
    "INTERVAL",
)
ALLOWED_CAST_TYPES = ["smallint", "integer", "bigint", "numeric/decimal", "real", "double precision", "text",
                      "varchar", "char", "date", "time", "timestamp", "timestamptz", "boolean", "interval"]


@cache
def _cast_kinds() -> frozenset[Any]:
    from sqlglot import exp

    return frozenset(getattr(exp.DataType.Type, name) for name in _CAST_TYPES)


_ANONYMOUS = {"now", "char_length", "btrim"}  # functions sqlglot does not model in every dialect
ALLOWED_FUNCTIONS = ["coalesce", "nullif", "lower", "upper", "trim", "btrim", "length", "char_length", "substring",
                     "concat", "abs", "round", "cast", "date", "extract", "date_trunc", "now", "current_date",
                     "current_time", "current_timestamp"]

_DIALECTS = {"postgresql": "postgres", "postgres": "postgres", "mysql": "mysql", "mariadb": "mysql",
             "sqlite": "sqlite"}


def dialect_of(name: str | None) -> str | None:
    """sqlglot's dialect for a SQLAlchemy dialect name (None: sqlglot's generic SQL)."""
    return _DIALECTS.get((name or "").lower())


def _parse(text: str, dialect: str | None) -> exp.Expr:
    """The one checked boolean expression of ``text``; ValueError says what is not allowed."""
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import SqlglotError

    d = sqlglot.Dialect.get_or_raise(dialect)
    try:
        tokens = d.tokenize(text)
    except SqlglotError as exc:
        raise ValueError(f"filter is not valid SQL: {str(exc).splitlines()[0]}") from None
    if any(t.comments for t in tokens):
        raise ValueError("filter must not contain comments")
    if any(t.token_type == sqlglot.TokenType.SEMICOLON for t in tokens):
        raise ValueError("filter must be a single predicate (no ';')")
    try:
        trees = [t for t in d.parse(text) if t is not None]
    except SqlglotError as exc:
        raise ValueError(f"filter is not one SQL expression: {str(exc).splitlines()[0]}") from None
    if len(trees) != 1:
        raise ValueError("filter must be a single predicate")
    root = trees[0]
    for node in root.walk():
        _check_node(node)
    if root.find(exp.Column) is None:  # e.g. MySQL reads "name" as a string: the filter would be constant
        raise ValueError("filter must name at least one column of the table (MySQL quotes names with `...`, "
                         "not \"...\")")
    if not _is_boolean(root):
        raise ValueError(f"filter must be a boolean expression (a comparison, IN, LIKE, IS NULL, AND/OR/NOT), "
                         f"not {root.key}")
    return root


def _check_node(node: exp.Expr) -> None:
    from sqlglot import exp

    if node.comments:
        raise ValueError("filter must not contain comments")
    if isinstance(node, exp.Anonymous):
        if node.name.lower() not in _ANONYMOUS:
            raise ValueError(f"function {node.name}() is not allowed in a filter "
                             f"(allowed: {', '.join(ALLOWED_FUNCTIONS)})")
        return
    if isinstance(node, exp.Column):
        if node.table or node.args.get("db") or node.args.get("catalog"):
            raise ValueError(f"filter column {node.sql()} must be a column of the table itself, unqualified")
        return
    if isinstance(node, exp.DataType) and node.this not in _cast_kinds():
        kind = node.this.value if isinstance(node.this, exp.DataType.Type) else str(node.this)
        raise ValueError(f"cast to {node.sql()[:40] if kind == 'USER-DEFINED' else kind.lower()} is not allowed in "
                         f"a filter (allowed types: {', '.join(ALLOWED_CAST_TYPES)})")
    if isinstance(node, exp.In) and (node.args.get("query") or node.args.get("unnest") or node.args.get("field")):
        raise ValueError("filter must not contain a subquery (IN takes a list of values)")
    if isinstance(node, _allowed_nodes()):
        return
    if isinstance(node, exp.Query | exp.Subquery | exp.Exists | exp.DDL | exp.DML | exp.Command):
        raise ValueError(f"filter must not contain a statement or subquery ({node.key})")
    if isinstance(node, exp.Func):
        raise ValueError(f"function {node.sql_name().lower()}() is not allowed in a filter "
                         f"(allowed: {', '.join(ALLOWED_FUNCTIONS)})")
    raise ValueError(f"filter must not contain {node.key} ({node.sql()[:40]})")


def _is_boolean(node: exp.Expr) -> bool:
    from sqlglot import exp

    if isinstance(node, exp.Paren | exp.Not):
        return _is_boolean(node.this)
    # A bare column or CASE may be boolean: the source's type check decides (the filter cannot do harm).
    return isinstance(node, exp.Predicate | exp.Connector | exp.Boolean | exp.Column | exp.Xor | exp.Case)


def check_filter(text: str) -> str:
    """Config-load check (the source's dialect is not known yet): accept what sqlglot's generic SQL, or
    PostgreSQL's or MySQL's syntax, parses into an allowed predicate; the generic error otherwise."""
    first: ValueError | None = None
    for dialect in (None, "postgres", "mysql"):
        try:
            _parse(text, dialect)
            return text
        except ValueError as exc:
            if first is None:
                first = exc
            if "not valid SQL" not in str(exc) and "not one SQL expression" not in str(exc):
                raise  # it parsed and broke a rule: another dialect does not make it allowed
    assert first is not None
    raise first


def filter_columns(text: str, dialect: str | None) -> list[tuple[str, bool]]:
    """(name, quoted) of every column the filter names."""
    from sqlglot import exp

    return [(c.name, bool(c.this.args.get("quoted"))) for c in _parse(text, dialect).find_all(exp.Column)]


def render_filter(text: str, dialect: str | None, source_columns: list[str], where: str) -> str:
    """The checked filter as SQL for ``dialect``, each column quoted as the source spells it.

    ``where`` names system and table; a column the source does not have is a one-line ConfigError.
    """
    from sqlglot import exp

    try:
        root = _parse(text, dialect)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    for col in list(root.find_all(exp.Column)):
        name, quoted = col.name, bool(col.this.args.get("quoted"))
        found = _resolve(name, quoted, source_columns)
        if found is None:
            raise ConfigError(f"{where}: filter column {name!r} is not at the source "
                              f"(columns: {', '.join(source_columns)})")
        col.set("this", exp.to_identifier(found, quoted=True))
    return root.sql(dialect=dialect)


def _resolve(name: str, quoted: bool, source_columns: list[str]) -> str | None:
    if name in source_columns:
        return name
    if quoted:
        return None
    folded: Any = [c for c in source_columns if c.lower() == name.lower()]
    return folded[0] if len(folded) == 1 else None
