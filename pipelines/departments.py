"""The department registry: ``schemas/departments.yml``, every department that owns a system or a dataset.

Registry files (``department:``) and contracts (``owner:``) hold a department CODE, checked here: the body's
统一社会信用代码 (GB 32100, check char verified with python-stdnum) or the city's 部门编码 (division code +
``BM`` + 3-digit serial). Pages, DAG owners and tags show the Chinese name; alerts use the contact and the
Airflow connection ids. Loading is a local YAML read, cached per file version: the DAG factory calls it at
parse time. One loader (``load_departments``: a file, a project's settings, or the configured project) and one
name lookup (``department_name``) serve every caller.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    Field,
    ValidationInfo,
    field_validator,
)

from pipelines.errors import ConfigError
from pipelines.settings import Settings, load_settings

DEPARTMENT_CODE_RE = re.compile(r"^\d{6}BM\d{3}$")
"""The city's 部门编码 for a body without a credit code of its own: GB/T 2260 division code + BM + serial."""
DEPARTMENTS_FILE = Path("schemas") / "departments.yml"


def check_department_code(value: str) -> str:
    """A 统一社会信用代码 with a valid GB 32100 check char, or a 部门编码 (``340100BM001``)."""
    from stdnum.cn import uscc
    from stdnum.exceptions import InvalidChecksum, ValidationError

    if DEPARTMENT_CODE_RE.match(value):
        return value
    if len(value) == 18:
        try:
            return str(uscc.validate(value))
        except InvalidChecksum:
            raise ValueError(f"department code {value!r}: the check character {value[-1]!r} does not match "
                             "(GB 32100); copy the 统一社会信用代码 from the body's certificate") from None
        except ValidationError:
            pass
    raise ValueError(f"department code {value!r} is neither a 统一社会信用代码 (18 characters of "
                     "0-9 A-H J-N P-R T U W-Y, GB 32100) nor a 部门编码 (division code + BM + 3 digits, "
                     "e.g. 340100BM001)")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Contact(_Model):
    """Who gets the department's alerts (a governance contact, not a personal record)."""

    name: str = Field(min_length=1)
    email: EmailStr | None = None
    phone: str | None = Field(default=None, pattern=r"^[0-9+\-() ]{5,24}$")


class AlertRoutes(_Model):
    """Airflow connection ids the alerts go through; none configured → alerts are only logged."""

    smtp_conn_id: str | None = None
    http_conn_id: str | None = None


class Department(_Model):
    code: str
    """统一社会信用代码 or 部门编码 (提供方代码 in the catalog)."""
    name: str = Field(min_length=2)
    """Official Chinese name, e.g. 合肥市公安局."""
    contact: Contact
    alerts: AlertRoutes = AlertRoutes()

    @field_validator("code")
    @classmethod
    def _code(cls, v: str) -> str:
        return check_department_code(v)


class DepartmentFile(_Model):
    departments: list[Department] = Field(min_length=1)


def departments_file(settings: Settings) -> Path:
    return settings.root / DEPARTMENTS_FILE


class Departments(dict[str, Department]):
    """code → Department, remembering the file it was read from (an unknown code's error names it)."""

    file: Path = DEPARTMENTS_FILE


_CACHE: dict[Path, tuple[tuple[int, int], Departments]] = {}


def load_departments(source: Settings | Path | str | None = None) -> Departments:
    """The department registry (code → Department) of a file, of a project (its settings' root), or, with
    no argument, of the configured project (``CITYLAKE_ROOT``); a ConfigError names file:line of every
    problem (bad code, repeated code or name).

    Cached per (file, mtime, size): every registry file and contract checks its department against it."""
    from pipelines.registry import line_of, parse_yaml_model

    if source is None or isinstance(source, Settings):
        path = departments_file(source or load_settings())
    else:
        path = Path(source)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{path}:1: the department registry does not exist (every source system and "
                          "contract names its department by code there)") from None
    version = (stat.st_mtime_ns, stat.st_size)
    cached = _CACHE.get(path)
    if cached is not None and cached[0] == version:
        return _copy(cached[1])
    lines: dict[tuple[Any, ...], int] = {}
    parsed: DepartmentFile = parse_yaml_model(path, DepartmentFile, lines=lines)
    out = Departments()
    out.file = path
    names: dict[str, int] = {}
    problems = []
    for i, d in enumerate(parsed.departments):
        where = f"{path}:{line_of(lines, 'departments', i, 'code')}: departments.{i}"
        if d.code in out:
            problems.append(f"{where}.code: department code {d.code!r} is listed twice")
        elif d.name in names:
            problems.append(f"{where}.name: department name {d.name!r} is listed twice "
                            f"(departments.{names[d.name]})")
        out[d.code] = d
        names.setdefault(d.name, i)
    if problems:
        raise ConfigError(*problems)
    _CACHE[path] = (version, out)
    return _copy(out)


def _copy(departments: Departments) -> Departments:
    out = Departments(departments)  # callers may add to theirs; the cached one stays as read
    out.file = departments.file
    return out


def department_name(departments: Mapping[str, Department], code: str | None) -> str:
    """The Chinese name of a department code; the value itself when unknown (old meta rows hold names);
    未指定部门 when there is none."""
    if not code:
        return "未指定部门"
    d = departments.get(code)
    return d.name if d is not None else code


def quoted_code(value: Any, field: str) -> Any:
    """A department code YAML read as a number (unquoted digits) fails with its fix, not with pydantic's
    "Input should be a valid string" (a ``mode="before"`` validator of ``department``/``owner``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f'quote the code: YAML reads {value} as a number (write {field}: "{value}")')
    return value


def check_department(code: str, departments: Mapping[str, Department] | None = None) -> str:
    """``code`` when it is in the registry (the configured project's when none is given), else a ValueError
    naming the registry file and the near matches (by code and by name; an old free-text name such as
    市公安局 points at its code), never the whole list: a city has a hundred bodies."""
    departments = load_departments() if departments is None else departments
    if code in departments:
        return code
    file = getattr(departments, "file", DEPARTMENTS_FILE)
    by_name = {d.name: d.code for d in departments.values()}
    near_codes = difflib.get_close_matches(code, list(departments), n=3, cutoff=0.85)
    near_names = [n for n in by_name if len(code) >= 3 and n.endswith(code)] or \
        difflib.get_close_matches(code, list(by_name), n=3, cutoff=0.6)
    near = list(dict.fromkeys([*near_codes, *(by_name[n] for n in near_names)]))[:3]
    hint = (f"; did you mean {', '.join(f'{c!r} ({departments[c].name})' for c in near)}?" if near
            else "; add the department there first, or use one of its codes")
    raise ValueError(f"unknown department code {code!r} (not in {file}){hint}")


def _quoted_field(value: Any, info: ValidationInfo) -> Any:
    return quoted_code(value, info.field_name or "department")


def _registered(code: str, info: ValidationInfo) -> str:
    # always checked: without a registry in the context, the project's departments.yml (cached)
    return check_department(code, (info.context or {}).get("departments"))


DepartmentCode = Annotated[str, BeforeValidator(_quoted_field), AfterValidator(_registered)]
"""A field holding a department code (registry ``department:``, contract ``owner:``): quoted, registered."""
