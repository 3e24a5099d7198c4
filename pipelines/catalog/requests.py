"""开放需求受理反馈: requests for data, recorded with their status and answer in ``meta.requests``.

One store for the open-data portal's demand intake (kind ``open``) and, later, departments' sharing
requests (kind ``share``). The log is append-only: an intake writes a row with status 已受理; every status
change (``answer``) appends a full copy of the request with the new status, answer and who answered, so the
latest row of a ``request_id`` is its state and the history stays readable.

Requests arrive through ``citylake request add`` and an inbox folder, ``<data_dir>/inbox/requests/``:
``*.yml``/``*.yaml`` (one request, or a list) and ``*.csv`` (UTF-8, with or without BOM as Excel saves it;
Chinese or English headers). Each file is validated whole (pydantic): a file with any bad row is moved
to ``rejected/`` with ``<name>.reason.txt`` (one ``file:line: field: problem`` per problem) and nothing of
it is recorded, so fixing and dropping it again records every row once; a good file's requests are
recorded in one commit and the file moves to ``processed/``. Importing the same request again (the same
file dropped twice, a crash between the commit and the move) records nothing new: its id is a hash of its
content, and a request already stored with the same content is a duplicate.

The requester's contact is personal: stored as given, masked wherever a request is shown (``public``:
the CLI listing, ``catalog.json``, the report). Fail closed: a requester or answerer is shown in clear only when
it is a registered department or ends like an organisation (``mask_person``), else only its first character;
free text (title, purpose, answer) through ``mask_free`` (identifiers, house numbers, names set off in the text).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from pipelines.errors import CitylakeError, ConfigError
from pipelines.lake.meta import append_log
from pipelines.lake.raw import open_table
from pipelines.settings import TZ, Settings

TABLE = "meta.requests"
Kind = Literal["open", "share"]
KIND_LABELS = {"open": "开放需求", "share": "共享申请"}
RECEIVED, IN_PROGRESS, ANSWERED = "已受理", "处理中", "已答复"
OPENED, NOT_OPENED, SHARED, NOT_SHARED = "已开放", "不予开放", "已共享", "不予共享"
STATUSES = (RECEIVED, IN_PROGRESS, ANSWERED, OPENED, NOT_OPENED, SHARED, NOT_SHARED)
KIND_STATUSES: dict[str, tuple[str, ...]] = {"open": (RECEIVED, IN_PROGRESS, ANSWERED, OPENED, NOT_OPENED),
                                             "share": (RECEIVED, IN_PROGRESS, ANSWERED, SHARED, NOT_SHARED)}
"""The statuses a request of each kind can take (an open-data request is never 已共享)."""
NEEDS_ANSWER = (ANSWERED, OPENED, NOT_OPENED, SHARED, NOT_SHARED)
"""Statuses that close a request: the requester is told something, so an answer is required."""
INBOX = Path("inbox") / "requests"
PROCESSED, REJECTED = "processed", "rejected"
SUFFIXES = (".yml", ".yaml", ".csv")
CONTENT = ("kind", "dataset", "title", "requester", "requester_department", "contact", "purpose")
"""The fields that make a request what it is (its id hashes them): not its status, answer or times."""

FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "kind": ("kind", "类型", "需求类型"),
    "dataset": ("dataset", "数据集", "数据集代码", "数据集编码"),
    "title": ("title", "标题", "需求名称", "需求标题", "需求"),
    "requester": ("requester", "申请人", "需求方", "申请单位", "提出人"),
    "requester_department": ("requester_department", "申请部门", "申请部门代码", "部门代码"),
    "contact": ("contact", "联系方式", "联系电话", "电话", "邮箱"),
    "purpose": ("purpose", "用途", "需求用途", "用途说明", "申请理由", "理由"),
    "received_at": ("received_at", "收到时间", "受理时间", "提交时间", "申请时间", "申请日期", "日期"),
}
"""Inbox column headers and YAML keys, English or Chinese → field."""
_ALIAS = {alias.casefold(): name for name, aliases in FIELD_ALIASES.items() for alias in aliases}
KIND_ALIASES = {"open": "open", "开放": "open", "开放需求": "open", "数据开放": "open",
                "share": "share", "共享": "share", "共享申请": "share", "数据共享": "share"}
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHONE = re.compile(r"^\+?[0-9][0-9\-() ]{4,23}$")


class RequestError(CitylakeError):
    """A request that cannot be recorded or answered: the message names the request and what is wrong."""


def _blank(v: Any) -> Any:
    return None if isinstance(v, str) and not v.strip() else v


class RequestForm(BaseModel):
    """One request as it arrives (CLI or inbox); ``context`` = {"datasets": codes, "departments": the registry}."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)
    kind: Kind = "open"
    dataset: str | None = None
    title: str = Field(min_length=1, max_length=200)
    requester: str = Field(min_length=1, max_length=100)
    requester_department: str | None = None
    contact: str | None = Field(default=None, max_length=100)
    purpose: str = Field(min_length=1, max_length=2000)
    received_at: datetime | None = None

    @field_validator("kind", mode="before")
    @classmethod
    def _kind(cls, v: Any) -> Any:
        v = _blank(v)
        if v is None:
            return "open"
        kind = KIND_ALIASES.get(str(v).strip().casefold())
        if kind is None:
            raise ValueError(f"kind {v!r} is not one of open / share (开放 / 共享)")
        return kind

    @field_validator("dataset", "requester_department", "contact", mode="before")
    @classmethod
    def _optional(cls, v: Any) -> Any:
        v = _blank(v)
        return str(v).strip() if isinstance(v, int) else v  # a code Excel or YAML read as a number

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str | None, info: ValidationInfo) -> str | None:
        known = (info.context or {}).get("datasets")
        if v is None or known is None or v in known:
            return v
        import difflib

        near = difflib.get_close_matches(v, sorted(known), n=1)
        hint = f"did you mean {near[0]!r}?" if near else "leave it empty for data the catalog does not hold yet"
        raise ValueError(f"dataset {v!r} is not a catalogued dataset ({hint})")

    @field_validator("requester_department")
    @classmethod
    def _department(cls, v: str | None, info: ValidationInfo) -> str | None:
        known = (info.context or {}).get("departments")
        if v is None or known is None:
            return v
        from pipelines.departments import check_department

        return check_department(v, known)  # the registry's one message: its file and the near matches

    @field_validator("contact")
    @classmethod
    def _contact(cls, v: str | None) -> str | None:
        if v is None or _EMAIL.match(v) or (_PHONE.match(v) and sum(ch.isdigit() for ch in v) >= 5):
            return v
        # the value itself is personal: said by its shape only
        raise ValueError(f"contact ({len(v)} characters) is neither a telephone number nor an e-mail address")

    @field_validator("received_at", mode="before")
    @classmethod
    def _when(cls, v: Any) -> Any:
        v = _blank(v)
        if isinstance(v, str):  # Excel's 2026/11/20 10:00 as well as ISO 8601
            v = re.sub(r"^(\d{4})/(\d{1,2})/(\d{1,2})", lambda m: f"{m[1]}-{int(m[2]):02d}-{int(m[3]):02d}", v.strip())
        if isinstance(v, datetime) or v is None:
            return v
        if hasattr(v, "isoformat"):  # a YAML date
            return datetime(v.year, v.month, v.day)
        return v

    @field_validator("received_at")
    @classmethod
    def _zone(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return None
        v = (v if v.tzinfo else v.replace(tzinfo=TZ)).astimezone(UTC)
        if v > datetime.now(UTC) + timedelta(hours=1):
            raise ValueError(f"received_at {v.astimezone(TZ):%Y-%m-%d %H:%M} is in the future")
        return v

    @model_validator(mode="after")
    def _share_names_department(self) -> RequestForm:
        if self.kind == "share" and not self.requester_department:
            raise ValueError("a sharing request (kind share) names the requesting department's code "
                             "(requester_department / 申请部门代码)")
        return self

    def content_key(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f) for f in CONTENT)


@dataclass(frozen=True)
class Request:
    """A request's state: its latest row in ``meta.requests`` (or one row of its history)."""

    request_id: str
    kind: str
    dataset: str | None
    title: str
    requester: str
    requester_department: str | None
    contact: str | None
    purpose: str
    status: str
    answer: str | None
    answered_by: str | None
    received_at: datetime
    source: str
    recorded_at: datetime | None = None

    def content_key(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f) for f in CONTENT)

    def row(self) -> dict[str, Any]:
        """The ``meta.requests`` row (``recorded_at`` is set by ``append_log``)."""
        return {k: v for k, v in asdict(self).items() if k != "recorded_at"}


def mask_contact(value: Any) -> str | None:
    """A contact as a listing shows it: a mobile as 138****1234, an e-mail as z***@example.cn, any other
    number with only its first 4 and last 2 characters (a home line is as personal as a mobile)."""
    if value is None:
        return None
    import pyarrow as pa

    from pipelines.privacy.detect import MOBILE, mobiles
    from pipelines.privacy.mask import keep_ends, mask_kind

    text = str(value).strip()
    if mobiles(pa.array([text], pa.string()))[0]:
        return mask_kind(text, MOBILE)
    if _EMAIL.match(text):
        local, _, domain = text.partition("@")
        return f"{local[:1]}***@{domain}"
    return keep_ends(text, 4, 2)


ORG_SUFFIXES = ("大学", "学院", "学校", "中学", "小学", "幼儿园", "公司", "集团", "事务所", "中心", "协会", "学会",
                "研究会", "基金会", "商会", "联合会", "合作社", "银行", "医院", "研究院", "研究所", "委员会", "办公室",
                "政府", "法院", "检察院", "出版社", "报社", "电视台", "图书馆", "博物馆", "实验室", "工作室")
"""Endings that make a requester an organisation, shown in clear."""
ORG_ENDINGS = "局委办院所厅处科部室站队馆社"
"""One-character organisation endings: trusted only on a word no person's name can be (five characters or more,
or not starting with a surname: 数据资源局开放科, 统计局), since 王科 or 欧阳建科 is a name."""
_EN_ORG = re.compile(r"(?i)\b(?:university|college|institute|school|academy|company|co\.?,?\s*ltd|ltd|limited|inc|"
                     r"corp(?:oration)?|group|bureau|department|dept|centre|center|association|society|bank|hospital|"
                     r"office|commission|foundation|laboratory|lab)\.?$")
_TRAILING_NOTE = re.compile(r"\s*[（(][^（()）]*[)）]\s*$")
# Words that stand between a name and the rest of a sentence in a request's free text (申请人张伟, 联系人：李娜,
# 市民王芳申请…): the Han text is cut at them, at punctuation, spaces and digits, and each piece checked as a name.
_NAME_CUT = re.compile(r"[^\u3400-\u9fff·]+|申请人|联系人|经办人|负责人|申请|需要|希望|请求|咨询|查询|用于|用途|市民|居民|"
                       r"个人|先生|女士|同志|老师|本人|我们|我|您|他|她|的|是|和|与|及|或|在|为|由|向|对|给|把|被|了|等|自|从")

_NOT_NAMES = frozenset({"单元", "公交", "公共", "公开", "公园", "公寓", "公路", "高速", "方向", "范围", "安全", "文化",
                        "周边", "明细", "经济", "交通", "车站", "金额", "时间", "程序", "江南", "林业", "农业"})
"""Common words that start with a surname character (单元, 公交): a free-text piece the name detector would
otherwise read as a name."""


def _is_organisation(text: str) -> bool:
    from pipelines.privacy.detect import surnames

    core = _TRAILING_NOTE.sub("", text).strip()  # 合肥工业大学（科研处）: the note does not make it a person
    if not core:
        return False
    if core.endswith(ORG_SUFFIXES) or _EN_ORG.search(core):
        return True
    single, double = surnames()
    could_be_name = len(core) <= 4 and (core[:1] in single or core[:2] in double)
    return core[-1] in ORG_ENDINGS and not could_be_name


def mask_person(value: Any, departments: Mapping[str, Any] | None = None) -> str | None:
    """A requester or answerer, fail closed: shown in clear only when it is a registered department (code or
    name in ``schemas/departments.yml``) or ends like an organisation (``ORG_SUFFIXES``, ``ORG_ENDINGS``, the
    English equivalents), identifiers inside it masked; anything else (张伟, 张伟（个人）, 市民张伟, Zhang Wei,
    an e-mail) may be a person and shows its first character only (an e-mail as z***@example.cn)."""
    if value is None:
        return None
    from pipelines.privacy.detect import PERSON_NAME
    from pipelines.privacy.mask import mask_kind, mask_text

    text = str(value).strip()
    if departments and (text in departments or text in {getattr(d, "name", None) for d in departments.values()}):
        return text  # a registered department's code or name (a credit code is shaped like an ID: not masked)
    if _is_organisation(text):
        return mask_text(text)
    if _EMAIL.match(text):
        return mask_contact(text)
    return mask_kind(text, PERSON_NAME)


def mask_free(text: Any) -> str | None:
    """A request's free text (title, purpose, answer) as pages show it: identifiers masked (``mask_message``),
    house-number addresses (``detect.HOUSE_NUMBER``, anywhere in the text) with their numbers hidden
    (长江西路**号), and personal names hidden: the Han text is cut at punctuation, spaces, digits and the
    words that set a name off (``_NAME_CUT``) and each piece of a name's length (2–3 characters, 4 with a
    two-character surname) the name detector reads as a name is masked.
    A name run into the middle of an unbroken sentence is not found (no word segmenter in the project)."""
    if text is None:
        return None
    import pyarrow as pa
    import pyarrow.compute as pc

    from pipelines.privacy.detect import HOUSE_NUMBER, house_numbers, person_names, surnames
    from pipelines.privacy.mask import mask_message

    out = mask_message(text) or ""
    for _ in range(20):  # one house number per pass (RE2 extracts the first match)
        arr = pa.array([out], pa.string())
        if not house_numbers(arr)[0]:
            break
        found = pc.extract_regex(pc.utf8_normalize(arr, "NFKC"), f"(?P<a>{HOUSE_NUMBER})").flatten()[0][0].as_py()
        hidden = re.sub(r"[0-9０-９零〇一二三四五六七八九十百千两]", "*", found)
        if found not in out or hidden == found:
            out = re.sub(r"[0-9０-９]", "*", out)  # full-width text: hide every digit rather than the address
            break
        out = out.replace(found, hidden)
    _single, double = surnames()
    pieces = [p for p in _NAME_CUT.split(out)
              if (2 <= len(p) <= 3 or (len(p) == 4 and p[:2] in double)) and p not in _NOT_NAMES]
    if pieces:
        names = {p for p, n in zip(pieces, person_names(pa.array(pieces, pa.string())), strict=True) if n}
        for name in sorted(names, key=len, reverse=True):
            out = out.replace(name, name[:1] + "*" * (len(name) - 1))
    return out


def public(r: Request, departments: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The request as every listing and page shows it (JSON-safe): contact, requester and answerer masked,
    free text through ``mask_message``, times ISO UTC, the requesting department's name from the registry."""
    from pipelines.departments import department_name
    from pipelines.privacy.mask import mask_file_name

    source = r.source
    if source.startswith("inbox:"):  # inbox files are named after people too
        source = "inbox:" + (mask_file_name(source.removeprefix("inbox:")) or "")
    return {
        "request_id": r.request_id, "kind": r.kind, "kind_label": KIND_LABELS.get(r.kind, r.kind),
        "dataset": r.dataset, "title": mask_free(r.title), "requester": mask_person(r.requester, departments),
        "requester_department": ({"code": r.requester_department,
                                  "name": department_name(departments or {}, r.requester_department)}
                                 if r.requester_department else None),
        "contact": mask_contact(r.contact), "purpose": mask_free(r.purpose), "status": r.status,
        "answer": mask_free(r.answer), "answered_by": mask_person(r.answered_by, departments),
        "received_at": _iso(r.received_at), "source": source, "updated_at": _iso(r.recorded_at),
    }


def _iso(ts: datetime | None) -> str | None:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z") if ts is not None else None


# --- reading -------------------------------------------------------------------------------------------

def _of(row: Mapping[str, Any]) -> Request:
    return Request(**{k: row.get(k) for k in Request.__dataclass_fields__})  # type: ignore[arg-type]


def read_rows(catalog: Any) -> list[Request]:
    """Every row of ``meta.requests`` (none yet: empty), oldest first (rows without ``recorded_at`` first)."""
    table = open_table(catalog, TABLE)
    if table is None or table.current_snapshot() is None:
        return []
    rows = [_of(r) for r in table.scan().to_arrow().to_pylist()]
    return sorted(rows, key=_order)


def _order(r: Request) -> tuple[bool, datetime]:
    return (r.recorded_at is not None, r.recorded_at or datetime.min.replace(tzinfo=UTC))


def latest(rows: Iterable[Request]) -> dict[str, Request]:
    """request id → its latest row (``recorded_at``; a row without one counts as older than any other)."""
    out: dict[str, Request] = {}
    for r in sorted(rows, key=_order):
        out[r.request_id] = r
    return out


def list_requests(catalog: Any, *, status: str | None = None, kind: str | None = None,
                  dataset: str | None = None, until: datetime | None = None) -> list[Request]:
    """Each request's current state, newest received first, filtered by status, kind and dataset; ``until``:
    its state at that time (rows recorded later left out: a report for an earlier day)."""
    rows = read_rows(catalog)
    if until is not None:
        rows = [r for r in rows if r.recorded_at is None or r.recorded_at <= until]
    current = latest(rows).values()
    picked = [r for r in current if (status is None or r.status == status) and (kind is None or r.kind == kind)
              and (dataset is None or r.dataset == dataset)]
    return sorted(picked, key=lambda r: (r.received_at, r.request_id), reverse=True)


def history(catalog: Any, request_id: str) -> list[Request]:
    """Every recorded row of one request, oldest first (intake, then each status change)."""
    return [r for r in read_rows(catalog) if r.request_id == request_id]


# --- writing -------------------------------------------------------------------------------------------

def request_id(form: RequestForm, received_at: datetime, salt: int = 0) -> str:
    """``REQ-<YYYYMMDD>-<8 hex>``: the day received (Asia/Shanghai) and a hash of the content (and the
    time received when the form states it), so the same request gets the same id on every import."""
    content = {f: getattr(form, f) for f in CONTENT}
    content["received_at"] = _iso(form.received_at)
    if salt:
        content["salt"] = salt
    digest = hashlib.sha256(json.dumps(content, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()
    return f"REQ-{received_at.astimezone(TZ):%Y%m%d}-{digest[:8]}"


def _context(settings: Settings) -> dict[str, Any]:
    """What a request is checked against: the catalogued dataset codes (std and curated) and departments."""
    from pipelines.catalog.build import load_everything

    loaded = load_everything(settings)
    return {"datasets": set(loaded.contracts) | set(loaded.curated), "departments": loaded.departments}


def _new(form: RequestForm, existing: Mapping[str, Request], source: str, now: datetime) -> Request:
    received = form.received_at or now
    salt = 0
    while True:
        rid = request_id(form, received, salt)
        if rid not in existing:
            break
        salt += 1  # a hash collision with another request: the next id, still derived from the content
    return Request(request_id=rid, kind=form.kind, dataset=form.dataset, title=form.title, requester=form.requester,
                   requester_department=form.requester_department, contact=form.contact, purpose=form.purpose,
                   status=RECEIVED, answer=None, answered_by=None, received_at=received, source=source)


def _duplicate(form: RequestForm, existing: Iterable[Request]) -> Request | None:
    """The stored request this form repeats: same content, and the same time received when it states one."""
    key = form.content_key()
    for r in existing:
        if r.content_key() == key and (form.received_at is None or r.received_at == form.received_at):
            return r
    return None


def _validate(data: Mapping[str, Any], context: dict[str, Any]) -> RequestForm:
    try:
        return RequestForm.model_validate(dict(data), context=context)
    except ValidationError as exc:
        raise RequestError("; ".join(_problem(e) for e in exc.errors())) from None


def _problem(err: Any) -> str:
    where = ".".join(str(p) for p in err["loc"]) or "(request)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = f"unknown field; allowed: {', '.join(FIELD_ALIASES)}"
    elif err["type"] == "missing":
        msg = "required field is missing"
    elif err["type"] == "string_too_short":
        msg = "required field is empty"
    return f"{where}: {msg}"


def add_request(settings: Settings, *, title: str, requester: str, purpose: str, kind: str = "open",
                dataset: str | None = None, requester_department: str | None = None, contact: str | None = None,
                received_at: datetime | str | None = None, catalog: Any = None) -> Request:
    """Record one request (status 已受理, source ``cli``); returns it. RequestError (one line) on bad input."""
    from pipelines.lake.catalog import get_catalog

    form = _validate({"kind": kind, "dataset": dataset, "title": title, "requester": requester,
                      "requester_department": requester_department, "contact": contact, "purpose": purpose,
                      "received_at": received_at}, _context(settings))
    catalog = catalog if catalog is not None else get_catalog(settings)
    existing = latest(read_rows(catalog))
    now = datetime.now(UTC)
    # a person adding a request means a new one (the same words twice are two requests): the time added
    # is part of the id unless the form states when it was received
    r = _new(form if form.received_at else form.model_copy(update={"received_at": now}), existing, "cli", now)
    append_log(catalog, TABLE, [r.row()])
    return r


def answer_request(settings: Settings, rid: str, *, status: str, by: str, answer: str | None = None,
                   dataset: str | None = None, catalog: Any = None) -> tuple[Request, bool]:
    """Move a request to ``status`` with ``answer`` by ``by`` (a row appended); ``dataset`` links the dataset
    that meets it when the request named none. Returns (its new state, whether a row was appended: the same
    answer given twice is recorded once)."""
    from pipelines.lake.catalog import get_catalog

    rid = rid.strip()
    catalog = catalog if catalog is not None else get_catalog(settings)
    current = latest(read_rows(catalog)).get(rid)
    if current is None:
        raise RequestError(f"no request {rid!r} (see `citylake request ls`)")
    allowed = KIND_STATUSES.get(current.kind, STATUSES)
    if status not in allowed:
        raise RequestError(f"request {rid}: status {status!r} is not one of {' / '.join(allowed)} "
                           f"(a {KIND_LABELS.get(current.kind, current.kind)})")
    by = (by or "").strip()
    if not by:
        raise RequestError(f"request {rid}: say who answers (--by: the office or person responsible)")
    answer = (answer or "").strip() or None
    if status in NEEDS_ANSWER and not answer:
        raise RequestError(f"request {rid}: status {status} tells the requester something: give the answer "
                           f"(--answer …{'; for a refusal, the reason and its basis' if status in (NOT_OPENED, NOT_SHARED) else ''})")
    if dataset is not None:
        dataset = dataset.strip() or None
    if dataset is not None and dataset != current.dataset:
        known = _context(settings)["datasets"]
        if dataset not in known:
            raise RequestError(f"request {rid}: dataset {dataset!r} is not a catalogued dataset")
    linked = dataset or current.dataset
    if status in (OPENED, SHARED) and not linked:
        raise RequestError(f"request {rid}: {status} names the dataset that meets it (--dataset <dataset>)")
    new = replace(current, status=status, answer=answer, answered_by=by, dataset=linked, recorded_at=None)
    if replace(current, recorded_at=None) == new:
        return current, False
    append_log(catalog, TABLE, [new.row()])
    return new, True


# --- the inbox -----------------------------------------------------------------------------------------

@dataclass
class FileOutcome:
    """What one inbox file came to: ``imported`` (new and duplicate request ids) or ``rejected`` (problems,
    each ``file:line: field: problem``), and where the file was moved."""

    file: str
    status: Literal["imported", "rejected"]
    new: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    moved_to: str | None = None


def inbox_dir(settings: Settings) -> Path:
    return settings.data_dir / INBOX


def _field(key: Any) -> str | None:
    return _ALIAS.get(str(key).strip().replace("\u3000", "").casefold())


def _rows_yaml(path: Path) -> list[tuple[int, dict[str, Any], dict[str, int]]]:
    """(line, fields, line of each field) per request of a YAML file: one mapping or a list of them."""
    from pipelines.registry import line_of, load_yaml

    data, lines = load_yaml(path)  # invalid YAML: ConfigError naming file and line
    items = data if isinstance(data, list) else [data]
    out = []
    for i, item in enumerate(items):
        loc: tuple[Any, ...] = (i,) if isinstance(data, list) else ()
        line = line_of(lines, *loc) if loc else 1
        if not isinstance(item, dict):
            raise ConfigError(f"{path.name}:{line}: expected a request (title, requester, purpose, …), "
                              "or a list of them")
        fields: dict[str, Any] = {}
        where: dict[str, int] = {}
        for key, value in item.items():
            name = _field(key) or str(key)
            fields[name] = value
            where[name] = line_of(lines, *loc, key)
        out.append((line, fields, where))
    return out


def _rows_csv(path: Path) -> list[tuple[int, dict[str, Any], dict[str, int]]]:
    """(line, fields, line of each field) per data row of a CSV file, headers mapped to fields."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path.name}:{line}: not UTF-8 (GBK?): save the file as UTF-8 or \"CSV UTF-8\" "
                          "in Excel") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header or not any(h.strip() for h in header):
        raise ConfigError(f"{path.name}:1: no header row (columns: {', '.join(FIELD_ALIASES)} or 标题, 申请人, 用途, …)")
    names = [_field(h) for h in header]
    unknown = [h for h, n in zip(header, names, strict=True) if n is None and h.strip()]
    if unknown:
        raise ConfigError(f"{path.name}:1: unknown column(s) {', '.join(map(repr, unknown))}; known: "
                          + "; ".join(f"{k} ({'/'.join(v[1:])})" for k, v in FIELD_ALIASES.items()))
    repeated = sorted({n for n in names if n and names.count(n) > 1})
    if repeated:
        raise ConfigError(f"{path.name}:1: column(s) {', '.join(repeated)} given twice (one header per field)")
    out = []
    start = reader.line_num + 1
    for row in reader:
        if any(cell.strip() for cell in row):
            if len(row) > len(header):
                raise ConfigError(f"{path.name}:{start}: {len(row)} cells but {len(header)} columns "
                                  "(a comma inside a cell needs quotes)")
            fields = {n: v for n, v in zip(names, row, strict=False) if n}
            out.append((start, fields, dict.fromkeys(fields, start)))
        start = reader.line_num + 1
    return out


def _read_file(path: Path, context: dict[str, Any]) -> tuple[list[RequestForm], list[str]]:
    """The requests of one inbox file, or its problems (``file:line: field: problem``, every bad row)."""
    try:
        rows = _rows_csv(path) if path.suffix.lower() == ".csv" else _rows_yaml(path)
    except ConfigError as exc:  # names the file by its path: the reason file names it by its name
        return [], [p.replace(str(path), path.name) for p in exc.problems]
    if not rows:
        return [], [f"{path.name}:1: no requests in the file"]
    forms, problems = [], []
    for line, fields, where in rows:
        try:
            forms.append(RequestForm.model_validate(fields, context=context))
        except ValidationError as exc:
            for e in exc.errors():
                name = str(e["loc"][0]) if e["loc"] else ""
                problems.append(f"{path.name}:{where.get(name, line)}: {_problem(e)}")
    return forms, problems


def _move(path: Path, folder: Path) -> Path:
    """Move ``path`` into ``folder`` under its name, or with the time added when that name is taken."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    if target.exists():
        target = folder / f"{path.stem}.{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}{path.suffix}"
    shutil.move(str(path), target)
    return target


def import_inbox(settings: Settings, inbox: Path | None = None, *, catalog: Any = None) -> list[FileOutcome]:
    """Import every ``*.yml``/``*.yaml``/``*.csv`` of the inbox (default ``<data_dir>/inbox/requests``), in
    name order: one commit per good file, then the file to ``processed/``; a bad file to ``rejected/`` with
    ``<name>.reason.txt``. A request already stored (same content) is counted as a duplicate, not added."""
    from pipelines.lake.catalog import get_catalog

    folder = Path(inbox) if inbox is not None else inbox_dir(settings)
    if not folder.is_dir():
        raise RequestError(f"inbox {folder} does not exist (requests are dropped there as *.yml or *.csv)")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not files:
        return []
    context = _context(settings)
    catalog = catalog if catalog is not None else get_catalog(settings)
    existing = latest(read_rows(catalog))
    outcomes = []
    for path in files:
        forms, problems = _read_file(path, context)
        if problems:
            moved = _move(path, folder / REJECTED)
            moved.with_name(moved.name + ".reason.txt").write_text("\n".join(problems) + "\n", encoding="utf-8")
            outcomes.append(FileOutcome(path.name, "rejected", problems=problems, moved_to=str(moved)))
            continue
        now = datetime.now(UTC)
        outcome = FileOutcome(path.name, "imported")
        rows = []
        for form in forms:
            seen = _duplicate(form, existing.values())
            if seen is not None:
                outcome.duplicates.append(seen.request_id)
                continue
            r = _new(form, existing, f"inbox:{path.name}", now)
            existing[r.request_id] = r
            outcome.new.append(r.request_id)
            rows.append(r.row())
        append_log(catalog, TABLE, rows)  # one commit per file (none when every request was there already)
        outcome.moved_to = str(_move(path, folder / PROCESSED))
        outcomes.append(outcome)
    return outcomes
