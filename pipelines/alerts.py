"""Alerts: a held batch or rejected drop files, told to the owning department in a short Chinese message.

Delivery is Airflow's notifiers, chosen by the connection ids the department registry names
(``schemas/departments.yml`` → ``alerts: {smtp_conn_id, http_conn_id}``): ``SmtpNotifier`` mails the
department's contact, ``HttpNotifier`` posts JSON to a webhook. The DAG tasks call them explicitly
(``notify``), since a load that rejected files succeeds and no failure callback would fire.

Alerting never decides anything: a route that is not configured is one log line, a delivery that fails
is a warning, and neither fails the load or changes the held verdict. Messages carry names, rule ids,
counts and a link to the report page, never a failing value; anything quoted goes through
``pipelines.privacy``. The providers are imported only when a message is sent (DAG parse stays light).
"""

from __future__ import annotations

import html
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pipelines.departments import department_name, load_departments
from pipelines.privacy import mask_file_name, mask_message, mask_text
from pipelines.settings import Settings, load_settings

if TYPE_CHECKING:
    from pipelines.departments import Department
    from pipelines.quality.gate import QualityGateError
    from pipelines.registry import SourceSystem

log = logging.getLogger(__name__)

KIND_TITLE = {"held": "批次暂停发布", "rejected": "文件被拒收", "failed": "任务失败"}
MAX_DETAILS = 5
"""Lines listed under the main rule (further blocking rules, rejected files); the page has the rest."""
DEFAULT_FROM = "citylake@localhost"
"""Sender when the SMTP connection sets no ``from_email`` extra."""
REJECTED_RULE = "drop_file_rejected"
HTTP_TIMEOUT_S = 30.0
"""A webhook that does not answer must not hold the load task (connection extra ``timeout`` overrides)."""


@dataclass(frozen=True)
class Alert:
    kind: Literal["held", "rejected", "failed"]
    dataset_or_table: str
    """The dataset code (held), the raw table identifier, e.g. ``raw.permits__applications`` (rejected), or
    ``<dag_id>.<task_id>[<map index>]`` (failed)."""
    department_code: str
    rule: str
    """held: the blocking rule id (the most failing one); rejected: why the files were refused; failed: the
    exception's type."""
    count: int
    """held: rows failing that rule; rejected: files rejected; failed: tries made."""
    page: str
    """Full URL of the report page to open (``report_url``)."""
    name: str | None = None
    """Chinese name of the dataset or source table, when known."""
    rule_text: str | None = None
    """The rule's Chinese description."""
    evaluated: int | None = None
    """held: rows the rule checked (so the count reads as 120 / 500)."""
    threshold: float | None = None
    details: tuple[str, ...] = field(default_factory=tuple)
    """Further lines: other blocking rules, or each rejected file with its (masked) reason."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def report_url(settings: Settings, page: str) -> str:
    """The URL of a report page: ``CITYLAKE_REPORT_URL`` (where the site is served); unset, where the site
    is published: ``<artifacts>/report`` (``report__quality`` puts it there: on S3 in production, else the
    local ``file://<lake>/report``, which only the machine that built it can open; ``send_alert`` warns)."""
    base = os.environ.get("CITYLAKE_REPORT_URL")
    if not base:
        artifacts = settings.artifacts
        base = (artifacts.rstrip("/") + "/report" if "://" in artifacts
                else (Path(artifacts) / "report").as_uri())
    return base.rstrip("/") + "/" + page.lstrip("/")


_report_url_warned = False


def _warn_report_url_unset(page: str) -> None:
    """Once per process, when an alert is about to go out: without ``CITYLAKE_REPORT_URL`` its link is a
    file or s3 location the recipients cannot open in a browser."""
    global _report_url_warned
    if _report_url_warned or os.environ.get("CITYLAKE_REPORT_URL"):
        return
    _report_url_warned = True
    log.warning("CITYLAKE_REPORT_URL is not set: alert links point at %s, which recipients cannot open; "
                "set it to the address where the report site is served", page)


def _safe(text: object) -> str:
    """An exception's text fit for a log line: URL secrets scrubbed (a webhook's ``?key=…``, ``user:token@``),
    then personal values masked."""
    from pipelines.connections import scrub_urls

    return mask_message(scrub_urls(str(text))) or ""


def _n(value: int) -> str:
    return f"{value:,}"


def alert_text(alert: Alert, departments: Mapping[str, Department]) -> tuple[str, str]:
    """(subject, plain-text body) in Chinese: what, whose, which rule, how many, where to look."""
    department = department_name(departments, alert.department_code)
    what = mask_text(alert.name or alert.dataset_or_table)
    code = mask_text(alert.dataset_or_table)
    label = f"「{what}」（{code}）" if what != code else f"「{code}」"
    rule = mask_text(alert.rule) or ""
    rule_text = mask_text(alert.rule_text) if alert.rule_text else None
    lines = [f"{department}：", ""]
    if alert.kind == "held":
        subject = f"【数据质量告警】{what}：{KIND_TITLE['held']}（{rule}，{_n(alert.count)} 行不通过）"
        lines.append(f"数据集{label}的新批次未通过质量门禁，已暂停发布；标准库（std）保持上一版本，其他批次不受影响。")
        lines.append(f"规则：{rule}" + (f"（{rule_text}）" if rule_text else ""))
        checked = f" / {_n(alert.evaluated)} 行" if alert.evaluated else " 行"
        over = f"，超过阈值 {alert.threshold:.0%}" if alert.threshold is not None else ""
        lines.append(f"不通过：{_n(alert.count)}{checked}{over}")
        if alert.details:
            lines.append("同时超出阈值的规则：")
        action = (f"请核对并修正源数据；修正后由治理人员重新校验（citylake quality run {code} --retry-held），"
                  f"或说明理由后放行（citylake quality release {code} --reason …）。")
    elif alert.kind == "failed":
        subject = f"【数据平台告警】{code}：{KIND_TITLE['failed']}（{rule}）"
        lines.append(f"任务「{code}」在 {_n(alert.count)} 次尝试后失败，本次运行未完成；已入湖的数据不受影响。")
        lines.append(f"错误：{rule}" + (f"：{rule_text}" if rule_text else ""))
        action = "请查看任务日志排查原因；修复后在 Airflow 中清除 (Clear) 该任务重跑（重跑幂等，不会重复装载）。"
    else:
        subject = f"【数据质量告警】{what}：{KIND_TITLE['rejected']} {_n(alert.count)} 个"
        lines.append(f"数据表{label}本次装载有 {_n(alert.count)} 个文件被拒收，其余文件不受影响。")
        if alert.details:
            lines.append("被拒收的文件及原因：")
        action = "请修正这些文件后重新投放（同名新内容会再次装载）。"
    shown = [mask_message(d) or "" for d in alert.details[:MAX_DETAILS]]
    lines.extend(f"  - {d}" for d in shown)
    if len(alert.details) > MAX_DETAILS:
        lines.append(f"  - 另有 {len(alert.details) - MAX_DETAILS} 项，见报告页面")
    lines += [action, f"详情：{alert.page}", "", "（本邮件由 citylake 自动发送；不含任何个人信息原值。）"]
    return subject, "\n".join(lines)


def _html(body: str, page: str) -> str:
    """The body as a small HTML mail (SmtpNotifier sends HTML): escaped lines, the page as a link."""
    parts = []
    for line in body.split("\n"):
        text = html.escape(line)
        if page and page in line:
            text = text.replace(html.escape(page), f'<a href="{html.escape(page, quote=True)}">{html.escape(page)}</a>')
        parts.append(text)
    return ('<html lang="zh-CN"><body style="font-family: \'Microsoft YaHei\', \'PingFang SC\', '
            "'Noto Sans CJK SC', sans-serif\">" + "<br>\n".join(parts) + "</body></html>")


def _connection(conn_id: str) -> Any | None:
    """The Airflow connection (``AIRFLOW_CONN_<ID>``, a secrets backend, or the metadata DB), or None."""
    from airflow.sdk import BaseHook

    try:
        return BaseHook.get_connection(conn_id)
    except Exception as exc:  # noqa: BLE001 - not found, or no backend reachable: the route is not configured
        log.warning("alert route %r is not configured (%s): not sent", conn_id, _safe(exc))
        return None


def _send_smtp(conn_id: str, conn: Any, to: str, subject: str, body: str, page: str, context: Any) -> None:
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    notifier = SmtpNotifier(to=to, from_email=conn.extra_dejson.get("from_email") or DEFAULT_FROM,
                            subject=subject, html_content=_html(body, page), smtp_conn_id=conn_id)
    # notify(), not __call__: our text is data, never a Jinja template to render
    notifier.notify(context)


URL_LOGGERS = ("urllib3.connectionpool", "urllib3.util.retry", "requests")
"""Libraries under the HTTP provider that log the request URL (urllib3: ``"POST /send?key=… HTTP/1.1" 200``)."""


class _Redact(logging.Filter):
    """Replace given secrets in a record's message with ``***`` (for loggers of libraries we do not own)."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if any(s in text for s in self.secrets):
            for s in self.secrets:
                text = text.replace(s, "***")
            record.msg, record.args = text, None
        return True


@contextmanager
def _url_secrets_hidden(conn: Any) -> Iterator[None]:
    """While a webhook is called, keep the secret parts of its URL (query values, userinfo, token-like path
    segments) out of the logs: urllib3's own records are redacted here, and the secrets are registered with
    Airflow's log masker, which in a task redacts every line of the task log, the HTTP provider's included
    (it prints the URL: ``Sending 'POST' to url: …`` at debug, a connection error at warning). The password
    and sensitive extras of a connection Airflow masks on its own."""
    from airflow.sdk.log import mask_secret

    from pipelines.connections import url_secrets

    secrets = url_secrets(str(conn.host or ""))
    for secret in secrets:
        mask_secret(secret)
    hide = _Redact(secrets)
    loggers = [logging.getLogger(name) for name in URL_LOGGERS] if secrets else []
    for logger in loggers:
        logger.addFilter(hide)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(hide)


def _send_http(conn_id: str, conn: Any, payload: dict[str, Any], context: Any) -> None:
    from airflow.providers.http.notifications.http import HttpNotifier

    timeout = float(conn.extra_dejson.get("timeout") or HTTP_TIMEOUT_S)
    notifier = HttpNotifier(http_conn_id=conn_id, method="POST", json=payload,
                            headers={"Content-Type": "application/json; charset=utf-8"},
                            extra_options={"timeout": timeout})
    with _url_secrets_hidden(conn):
        notifier.notify(context)


def send_alert(alert: Alert, departments: Mapping[str, Department], context: Any = None) -> list[str]:
    """Deliver ``alert`` on the owning department's routes; returns the channels that delivered
    (``smtp:<conn_id>``, ``http:<conn_id>``). Never raises for a route or a delivery."""
    where = f"{alert.kind} alert for {alert.dataset_or_table}"
    department = departments.get(alert.department_code)
    if department is None:
        log.info("%s: department %r is not in the department registry: not sent", where, alert.department_code)
        return []
    routes = department.alerts
    if not (routes.smtp_conn_id or routes.http_conn_id):
        log.info("%s: department %s (%s) has no alert route (schemas/departments.yml alerts): not sent",
                 where, department.name, department.code)
        return []
    subject, body = alert_text(alert, departments)
    context = context if context is not None else {}
    sent: list[str] = []
    if routes.smtp_conn_id:
        to = department.contact.email
        conn = _connection(routes.smtp_conn_id) if to else None
        if not to:
            log.info("%s: department %s has no contact email: mail not sent", where, department.code)
        elif conn is not None:
            _warn_report_url_unset(alert.page)
            try:
                _send_smtp(routes.smtp_conn_id, conn, to, subject, body, alert.page, context)
                sent.append(f"smtp:{routes.smtp_conn_id}")
            except Exception as exc:  # noqa: BLE001 - the data verdict stands whether or not mail got through
                log.warning("%s: mail via %r failed: %s: %s", where, routes.smtp_conn_id, type(exc).__name__,
                            _safe(exc))
    if routes.http_conn_id and (conn := _connection(routes.http_conn_id)) is not None:
        _warn_report_url_unset(alert.page)
        payload = {**alert.to_dict(), "department_name": department.name, "subject": subject, "text": body}
        payload.update(name=mask_text(alert.name), rule_text=mask_text(alert.rule_text),
                       details=[mask_message(d) for d in alert.details])
        try:
            _send_http(routes.http_conn_id, conn, payload, context)
            sent.append(f"http:{routes.http_conn_id}")
        except Exception as exc:  # noqa: BLE001
            log.warning("%s: webhook %r failed: %s: %s", where, routes.http_conn_id, type(exc).__name__,
                        _safe(exc))
    if sent:
        log.info("%s sent to %s via %s", where, department.code, ", ".join(sent))
    return sent


def _contract_of_table(settings: Settings, system: str, table: str) -> dict[str, Any] | None:
    """The contract built from ``raw.<system>__<table>``, read as plain YAML: an alert about a load must not
    depend on the whole configuration validating."""
    from pipelines.contracts import contract_files_of_table

    found = contract_files_of_table(settings.root / "schemas" / "datasets", system, table)
    return found[0][1] if found else None


def rejected_alert(settings: Settings, system: SourceSystem, table: str,
                   files_rejected: list[dict[str, Any]]) -> Alert:
    """The alert of a load that rejected drop files; the page is the dataset built from the table, if any,
    else the raw table's catalog entry."""
    identifier = system.raw_table(table)
    contract = _contract_of_table(settings, system.system, table)
    page = f"datasets/{contract['dataset']}.html" if contract else f"catalog/{identifier}.html"
    # reasons were masked when the load wrote them (privacy.quote / mask_message); alert_text masks again.
    # File names are often the person's name and ID (张伟_3401….csv): masked part by part
    details = tuple(f"{mask_file_name(Path(str(r['file'])).name)}：{r.get('reason') or '无法读取'}"
                    for r in files_rejected)
    return Alert("rejected", identifier, system.department, REJECTED_RULE, len(files_rejected),
                 report_url(settings, page), name=(contract or {}).get("name") or f"{system.name} {table}",
                 rule_text="文件无法读取或解析，已拒收", details=details)


def held_alert(settings: Settings, exc: QualityGateError) -> Alert:
    """The alert of a held batch, from the gate's error (dataset, blocking rules and their counts)."""
    from pipelines.config import load_for

    if exc.dataset is None or not exc.failures:
        raise ValueError("the held-batch error carries no dataset or blocking rule")
    # load_for falls back to the std config when some curated contract is broken: that must not silence a held
    # std batch's alert; a held curated build alerts its owner like a held std batch
    config = load_for(settings, exc.dataset)
    contract: Any = config.contracts.get(exc.dataset) or config.curated[exc.dataset]
    first, *others = exc.failures
    details = tuple(f"{f['rule']}（{f['description']}）：{_n(f['failed'])} / {_n(f['evaluated'])} 行" for f in others)
    return Alert("held", contract.dataset, contract.owner, first["rule"], first["failed"],
                 report_url(settings, f"datasets/{contract.dataset}.html"), name=contract.name,
                 rule_text=first.get("description"), evaluated=first.get("evaluated"),
                 threshold=first.get("threshold"), details=details)


def alert_rejected(system: SourceSystem, table: str, files_rejected: list[dict[str, Any]],
                   settings: Settings | None = None, context: Any = None) -> list[str]:
    """What ``load_table`` calls when files were rejected: build, send, never raise (the load succeeded)."""
    try:
        settings = settings or load_settings()
        return send_alert(rejected_alert(settings, system, table, files_rejected), load_departments(settings), context)
    except Exception as exc:  # noqa: BLE001
        log.warning("rejected-files alert for %s.%s not sent: %s: %s", system.system, table,
                    type(exc).__name__, _safe(exc))
        return []


def alert_held(exc: QualityGateError, settings: Settings | None = None, context: Any = None) -> list[str]:
    """What ``publish_std`` calls before it fails on a held batch: build, send, never raise (the hold stands)."""
    try:
        settings = settings or load_settings()
        return send_alert(held_alert(settings, exc), load_departments(settings), context)
    except Exception as err:  # noqa: BLE001
        log.warning("held-batch alert for %s not sent: %s: %s", exc.dataset, type(err).__name__, _safe(err))
        return []


def failed_alert(settings: Settings, context: Any, departments: Mapping[str, Department]) -> Alert | None:
    """The alert of a task that failed for good (``on_failure_callback``), for the department named by the
    task's owner (a department's Chinese name, ``dag_defaults.default_args``); None for a failure that is
    already told or not the department's: a held batch (``publish_std`` sent its own alert) and a run's
    contradictory params (the person who triggered it sees the one-line error)."""
    ti = context.get("ti") or context.get("task_instance")
    task = context.get("task")
    exc = context.get("exception")
    cause = getattr(exc, "__cause__", None)
    if type(cause).__name__ == "QualityGateError" or type(exc).__name__ == "RunParamsError" \
            or str(exc or "").startswith("params:"):
        return None
    owner = getattr(task, "owner", None)
    code = next((c for c, d in departments.items() if d.name == owner or c == owner), None)
    if code is None:
        log.info("failure alert: task owner %r is not a department of the registry: not sent", owner)
        return None
    dag_id = getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", "?")
    task_id = getattr(ti, "task_id", None) or getattr(task, "task_id", "?")
    index = getattr(ti, "map_index", -1)
    where = f"{dag_id}.{task_id}" + (f"[{index}]" if isinstance(index, int) and index >= 0 else "")
    # scrubbed and masked whole, then cut: a cut first could end a URL inside its userinfo
    # (``postgresql://user:passw``), which no longer looks like userinfo and would keep the password
    text = _safe((str(exc).strip().splitlines() or [""])[0]) if exc is not None else None
    if text and len(text) > _FAILED_CHARS:
        text = text[:_FAILED_CHARS - 1] + "…"
    page = getattr(ti, "log_url", None) or report_url(settings, "index.html")
    return Alert("failed", where, code, type(exc).__name__ if exc is not None else "failed",
                 int(getattr(ti, "try_number", 1) or 1), page, name=where, rule_text=text or None)


_FAILED_CHARS = 300
"""The longest failure text an alert quotes (the exception's first line, scrubbed and masked)."""


def alert_task_failed(context: Any, settings: Settings | None = None) -> list[str]:
    """Every task's ``on_failure_callback`` (``dag_defaults.on_task_failure``): tell the owning department on
    its routes; nothing when it has none or its connections are not configured; never raises."""
    try:
        settings = settings or load_settings()
        departments = load_departments(settings)
        alert = failed_alert(settings, context, departments)
        return send_alert(alert, departments, context) if alert is not None else []
    except Exception as err:  # noqa: BLE001 - a callback that raises only adds noise to a failed task
        log.warning("failure alert not sent: %s: %s", type(err).__name__, _safe(err))
        return []
