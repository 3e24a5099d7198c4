"""Sharing grants: ``<grants>/*.yml`` (one file per consumer department) and the 免审即享 scenarios
(``<grants>/scenarios.yml``), parsed into pydantic models.

A grant file (by convention one per consumer department) lists grants::

    grants:
      - id: zrzy_enterprise
        consumer: "11340100003007777F"  # 合肥市自然资源和规划局
        dataset: enterprise
        columns: [uscc, enterprise_name]
        purpose: 国土空间规划中的企业用地核查
        delivery: {method: file}

Loading refuses only what is wrong with the files themselves (YAML syntax, an unknown or missing field, a
wrong type, a bad date, a grant id used twice, two grants of one consumer for the same dataset and delivery, a
database delivery without ``conn_id``), every problem as ``file:line: field: message``. ``isolate=True`` (the
delivery) leaves a broken file's grants out instead of raising and says why in ``Grants.problems``, so one
department's typo does not stop every other department's delivery. What the files say about the rest of the configuration (an unknown department,
dataset or column, an expired or unapproved grant) is not a load error: ``pipelines.share.policy.decide``
refuses such a grant, and the refusal is audited like a delivery.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, field_validator, model_validator

from pipelines.departments import quoted_code
from pipelines.errors import ConfigError
from pipelines.registry import check_code, line_of, load_yaml, parse_yaml_model
from pipelines.settings import Settings

SCENARIOS_FILE = "scenarios.yml"
"""The 免审即享 scenarios' file in the grants folder; every other ``*.yml`` there is a grant file."""

ID_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,99}")
"""Grant ids: lowercase letters, digits, ``_`` and ``-`` (each is a ``publish__sharing`` task id)."""

CONFIG_TASK = "grant_config"
"""``publish__sharing``'s task reporting grant files that do not load: no grant may take its id."""


def valid_id(gid: str) -> bool:
    return bool(ID_RE.fullmatch(gid)) and gid != CONFIG_TASK

DeidMethod = Literal["keep", "pseudonym", "mask"]
"""What a delivery does to a granted column: clear value, keyed pseudonym (per consumer), display mask."""

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


def _date_only(value: Any) -> Any:
    # pydantic reads an int as a Unix time and YAML reads 2026-01-05 10:00 as a datetime: neither is a date
    if isinstance(value, datetime) or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        raise ValueError(f"write a date as YYYY-MM-DD, not {value!r}")
    return value


Day = Annotated[date, BeforeValidator(_date_only)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GrantDelivery(_Model):
    """How a grant is delivered: a file drop under ``<exports>/share/…`` or a PostgreSQL schema."""

    method: Literal["file", "database"]
    conn_id: str | None = None
    """Connection id of the consumer's PostgreSQL (database delivery only); the URL, with its password, comes
    from the environment or Airflow (``pipelines.connections``), never from the grant."""

    @field_validator("conn_id")
    @classmethod
    def _conn_id(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", v):
            raise ValueError(f"connection id {v!r} must be letters, digits and '_', starting with a letter")
        return v

    @model_validator(mode="after")
    def _conn_for_database(self) -> GrantDelivery:
        if self.method == "database" and not self.conn_id:
            raise ValueError("a database delivery needs conn_id (the Airflow connection id of the consumer's "
                             "PostgreSQL)")
        if self.method == "file" and self.conn_id:
            raise ValueError("conn_id is for a database delivery; a file delivery has none: remove it")
        return self


class GrantEntry(_Model):
    """One grant as written in a grant file."""

    id: str
    """Unique across all grant files (an Airflow task id of ``publish__sharing`` and the audit's grant id)."""
    consumer: Annotated[Text, BeforeValidator(lambda v: quoted_code(v, "consumer"))]
    """The consumer department's code (schemas/departments.yml); checked against the registry by the policy."""
    dataset: Text
    """A std or curated dataset (``std.<dataset>`` / ``curated.<dataset>``)."""
    columns: list[Text] = Field(min_length=1)
    """The granted columns; the dataset's primary key must be among them (incremental delivery)."""
    purpose: Text | None = None
    """用途: required when a personal column is granted."""
    verification: bool = False
    """身份核验: with an approver, personal columns may be delivered clear (``deid: keep``)."""
    legal_basis: Text | None = None
    scenario: Text | None = None
    """A 免审即享 scenario id (scenarios.yml): a 有条件共享 dataset without an approver."""
    approver: Text | None = None
    approved_on: Day | None = None
    expires: Day | None = None
    delivery: GrantDelivery
    deid: dict[str, DeidMethod] = Field(default_factory=dict)
    """Column → keep | pseudonym | mask; a personal column not named here is masked, any other kept."""

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not ID_RE.fullmatch(v):
            raise ValueError(f"grant id {v!r} must match {ID_RE.pattern} (it names an Airflow task)")
        if v == CONFIG_TASK:
            raise ValueError(f"grant id {v!r} is publish__sharing's own check of the grant files: choose another")
        return v

    @field_validator("columns")
    @classmethod
    def _columns(cls, v: list[str]) -> list[str]:
        repeated = sorted({c for c in v if v.count(c) > 1})
        if repeated:
            raise ValueError(f"columns repeat: {', '.join(repeated)}")
        return v

    @model_validator(mode="after")
    def _dates(self) -> GrantEntry:
        if self.approved_on and self.expires and self.expires < self.approved_on:
            raise ValueError(f"expires {self.expires} is before approved_on {self.approved_on}")
        return self


class Grant(GrantEntry):
    """A loaded grant: the entry and where it was written."""

    file: str
    """The grant file, relative to the project root when it is inside it."""
    line: int
    """The line of the grant's entry (``- id: …``)."""

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


class GrantFile(_Model):
    grants: list[GrantEntry] = Field(default_factory=list)


class ScenarioEntry(_Model):
    """A 免审即享 scenario: a named use of a dataset the bureau decided needs no per-grant review."""

    id: str
    name: Text
    dataset: Text
    columns: list[Text] = Field(min_length=1)
    """The most a grant under this scenario may ask for."""
    purpose: Text
    legal_basis: Text
    approved_by: Text
    """The bureau's decision that made the scenario 免审即享."""
    consumers: list[Annotated[Text, BeforeValidator(lambda v: quoted_code(v, "consumers"))]] = Field(min_length=1)
    """The department codes the decision names as eligible: a grant of another department citing the scenario
    is refused (``unknown_scenario``)."""

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return check_code(v, "scenario id")


class Scenario(ScenarioEntry):
    file: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


class ScenarioFile(_Model):
    scenarios: list[ScenarioEntry] = Field(default_factory=list)


@dataclass
class Grants:
    grants: dict[str, Grant]
    """Grant id → grant, in file order (files sorted by name)."""
    scenarios: dict[str, Scenario]
    problems: dict[str, list[str]] = field(default_factory=dict)
    """File (as ``Grant.file`` shows it) → its ``file:line: …`` problems, for ``load_grants(isolate=True)``: that
    file's grants (or scenarios) are left out."""


def _shown(path: Path, root: Path) -> str:
    """The path as grants and audit rows carry it: relative to the project root when inside it."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _parse(path: Path, model: type[BaseModel], lines: dict[tuple[Any, ...], int]) -> Any:
    """``parse_yaml_model`` (an impossible date such as 2026-02-30 is already a file:line ConfigError there)."""
    return parse_yaml_model(path, model, lines=lines)


def grant_files(directory: Path) -> list[Path]:
    """The grant files of a grants folder, by name (the scenarios file excluded)."""
    return [p for p in sorted(directory.glob("*.yml")) if p.name != SCENARIOS_FILE]


def load_grants(settings: Settings, *, isolate: bool = False) -> Grants:
    """Every grant and scenario of ``settings.grants`` (a missing folder is no grants).

    Every structural problem of every file is a ``file:line: field: message`` line: one ConfigError listing them
    all, or, with ``isolate``, ``Grants.problems`` per file and that file's grants (scenarios) left out."""
    directory = settings.grants
    problems: dict[str, list[str]] = {}
    grants: dict[str, Grant] = {}
    scenarios: dict[str, Scenario] = {}
    # one grant per consumer, dataset and destination: two would deliver into the same place under two ids
    places: dict[tuple[str, str, str, str | None], Grant] = {}
    for path in grant_files(directory):
        shown = _shown(path, settings.root)
        lines: dict[tuple[Any, ...], int] = {}
        try:
            parsed: GrantFile = _parse(path, GrantFile, lines)
        except ConfigError as exc:
            problems[shown] = exc.problems
            continue
        found: list[str] = []
        loaded: list[Grant] = []
        for i, entry in enumerate(parsed.grants):
            line = line_of(lines, "grants", i)
            taken = grants.get(entry.id) or next((g for g in loaded if g.id == entry.id), None)
            if taken is not None:
                found.append(f"{path}:{line_of(lines, 'grants', i, 'id')}: grants.{i}.id: grant id {entry.id!r} "
                             f"is already used at {taken.where}")
                continue
            grant = Grant(**entry.model_dump(), file=shown, line=line)
            place = (grant.consumer, grant.dataset, grant.delivery.method, grant.delivery.conn_id)
            other = places.get(place) or next((g for g in loaded if _place(g) == place), None)
            if other is not None:
                target = grant.delivery.method + (f" ({grant.delivery.conn_id})" if grant.delivery.conn_id else "")
                found.append(f"{path}:{line}: grants.{i}: grant {grant.id!r} gives consumer {grant.consumer} dataset "
                             f"{grant.dataset} by {target} like grant {other.id!r} at {other.where}: one grant per "
                             f"consumer, dataset and delivery; a renewal under a new id replaces the old entry "
                             f"(delete {other.id!r} or edit it in place)")
                continue
            loaded.append(grant)
        if found:
            problems[shown] = found
            if isolate:
                continue  # a file is fixed as a whole: none of its grants go while it has a problem
        for grant in loaded:
            grants[grant.id] = grant
            places[_place(grant)] = grant
    path = directory / SCENARIOS_FILE
    if path.exists():
        shown = _shown(path, settings.root)
        lines = {}
        try:
            listed: ScenarioFile = _parse(path, ScenarioFile, lines)
        except ConfigError as exc:
            problems[shown] = exc.problems
        else:
            found = []
            for i, s in enumerate(listed.scenarios):
                if s.id in scenarios:
                    found.append(f"{path}:{line_of(lines, 'scenarios', i, 'id')}: scenarios.{i}.id: scenario id "
                                 f"{s.id!r} is already used at {scenarios[s.id].where}")
                    continue
                scenarios[s.id] = Scenario(**s.model_dump(), file=shown, line=line_of(lines, "scenarios", i))
            if found:
                problems[shown] = found
                if isolate:
                    scenarios = {}
    if problems and not isolate:
        raise ConfigError(*[p for found_ in problems.values() for p in found_])
    return Grants(grants, scenarios, problems)


def _place(grant: Grant) -> tuple[str, str, str, str | None]:
    return grant.consumer, grant.dataset, grant.delivery.method, grant.delivery.conn_id


def read_grant_ids(source: Settings | Path) -> tuple[list[str], list[str], list[str]]:
    """``(valid, invalid, problems)`` of a grants folder, read from the YAML alone (see ``grant_ids``): an invalid
    id (not matching ``ID_RE``, or ``CONFIG_TASK``) cannot name a task; ``problems`` are the ``file:line`` lines
    of files that are not YAML at all. One broken file never hides another file's ids."""
    directory = source.grants if isinstance(source, Settings) else Path(source)
    valid: list[str] = []
    invalid: list[str] = []
    problems: list[str] = []
    for path in grant_files(directory):
        try:
            data, _ = load_yaml(path)
        except ConfigError as exc:
            if "invalid date in YAML" not in str(exc):
                problems += exc.problems
                continue
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.BaseLoader)  # ids are still text
        entries = data.get("grants") if isinstance(data, dict) else None
        for entry in entries if isinstance(entries, list) else []:
            gid = entry.get("id") if isinstance(entry, dict) else None
            if isinstance(gid, str):
                ids = valid if valid_id(gid) else invalid
                if gid not in ids:
                    ids.append(gid)
    return valid, invalid, problems


def grant_ids(source: Settings | Path) -> list[str]:
    """The valid grant ids of a grants folder, read from the YAML alone (no validation, no other config): for the
    ``publish__sharing`` DAG file at parse time. ``source``: the settings (their ``grants``) or the grants
    folder itself. A file that is not valid YAML is a ConfigError naming file:line; entries without a text id
    and ids that cannot name a task are skipped (``load_grants`` reports them when a task runs)."""
    valid, _invalid, problems = read_grant_ids(source)
    if problems:
        raise ConfigError(*problems)
    return valid
