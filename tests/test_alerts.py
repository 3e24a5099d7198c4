"""Alerts through Airflow's notifiers, delivered to a local SMTP sink and a local HTTP endpoint the tests start:
Chinese summary, the right recipient, the report link, no unmasked identifier; no route → a log line;
a failing route → a warning; the DAG's load task alerts on rejected files and still succeeds."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import socket
import threading
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import scoped_env

from pipelines.settings import PROJECT_ROOT, TZ, load_settings

POLICE = "11340100003001113F"  # 合肥市公安局 in schemas/departments.yml (routes alerts_smtp, alerts_http)
RESIDENT_ID = "340104199001011234"
MOBILE = "13812345678"


@pytest.fixture(scope="module", autouse=True)
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A migrated Airflow home before Airflow is first imported in this process: the notifiers import it,
    and the first import fixes the metadata database for the whole session (the DAG tests use it too)."""
    from pipelines.demo import airflow_env, prepare_airflow

    base = tmp_path_factory.mktemp("alerts")
    (base / "registry").mkdir()
    env = {**airflow_env(PROJECT_ROOT, base / "airflow"), "CITYLAKE_REGISTRY_DIR": str(base / "registry"),
           "CITYLAKE_LAKE_DIR": str(base / "lake"), "CITYLAKE_DATA_DIR": str(base / "data"),
           "CITYLAKE_ROOT": str(PROJECT_ROOT), "CITYLAKE_RETRY_DELAY_SECONDS": "0.2"}
    with scoped_env(env):
        prepare_airflow(PROJECT_ROOT, base / "airflow")
        # Airflow configures logging when first imported: import it here, before any test's log capture
        # starts, so caplog sees every record whichever test runs first
        import airflow.providers.http.notifications.http  # noqa: F401
        import airflow.providers.smtp.notifications.smtp  # noqa: F401

        yield base


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _MailSink:
    """aiosmtpd handler keeping every envelope; ``refuse`` answers RCPT with 550."""

    def __init__(self, refuse: bool = False) -> None:
        self.envelopes: list[Any] = []
        self.refuse = refuse

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any) -> str:
        if self.refuse:
            return "550 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 Message accepted"


@pytest.fixture
def smtp_sink() -> Iterator[tuple[_MailSink, int]]:
    from aiosmtpd.controller import Controller

    sink, port = _MailSink(), _free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield sink, port
    finally:
        controller.stop()


class _Endpoint(ThreadingHTTPServer):
    status = 200

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict[str, Any]] = []


class _Handler(BaseHTTPRequestHandler):
    server: _Endpoint

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        self.send_response(self.server.status)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[_Endpoint]:
    server = _Endpoint()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _smtp_conn(port: int) -> str:
    return json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": port,
                       "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "citylake@example.org",
                                 "retry_limit": 0, "timeout": 5}})


def _http_conn(server: _Endpoint) -> str:
    return json.dumps({"conn_type": "http", "host": f"http://127.0.0.1:{server.server_address[1]}/hooks/citylake",
                       "extra": {"timeout": 5}})


def _departments(smtp: str | None = "test_alerts_smtp", http: str | None = "test_alerts_http") -> dict[str, Any]:
    from pipelines.departments import AlertRoutes, Contact, Department

    d = Department(code=POLICE, name="合肥市公安局",
                   contact=Contact(name="治理联络人", email="ga.data@hefei.example.org"),
                   alerts=AlertRoutes(smtp_conn_id=smtp, http_conn_id=http))
    return {d.code: d}


def _rejected_alert() -> Any:
    from pipelines.alerts import Alert

    # a file name and a reason quoting an ID and a mobile: both must arrive masked
    return Alert("rejected", "raw.population__person_drop", POLICE, "drop_file_rejected", 2,
                 "https://report.example.org/citylake/catalog/raw.population__person_drop.html",
                 name="人口基础信息系统 person_drop", rule_text="文件无法读取或解析，已拒收",
                 details=(f"person_{MOBILE}.csv：第 3 行: 值 {RESIDENT_ID} 无法解析为 date",
                          "empty.csv：空文件, 没有表头 (empty file: no header)"))


def _mail(sink: _MailSink) -> tuple[Any, str, str]:
    [envelope] = sink.envelopes
    message = email.message_from_bytes(envelope.content, policy=email.policy.default)
    return envelope, str(message["Subject"]), message.get_body(("html",)).get_content()


def test_mail_and_webhook_carry_the_chinese_summary_masked(smtp_sink: tuple[_MailSink, int], endpoint: _Endpoint,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.alerts import send_alert

    sink, port = smtp_sink
    monkeypatch.setenv("AIRFLOW_CONN_TEST_ALERTS_SMTP", _smtp_conn(port))
    monkeypatch.setenv("AIRFLOW_CONN_TEST_ALERTS_HTTP", _http_conn(endpoint))
    alert = _rejected_alert()
    assert send_alert(alert, _departments()) == ["smtp:test_alerts_smtp", "http:test_alerts_http"]

    envelope, subject, body = _mail(sink)
    assert envelope.rcpt_tos == ["ga.data@hefei.example.org"] and envelope.mail_from == "citylake@example.org"
    assert subject == "【数据质量告警】人口基础信息系统 person_drop：文件被拒收 2 个"
    assert "合肥市公安局" in body and "2 个文件被拒收" in body and "raw.population__person_drop" in body
    assert f'<a href="{alert.page}">' in body
    assert "340104********1234" in body and "138****5678" in body
    assert RESIDENT_ID not in body + subject and MOBILE not in body + subject

    [request] = endpoint.requests
    assert request["path"] == "/hooks/citylake" and request["headers"]["Content-Type"].startswith("application/json")
    payload = json.loads(request["body"])
    assert payload["kind"] == "rejected" and payload["department_code"] == POLICE
    assert payload["department_name"] == "合肥市公安局" and payload["count"] == 2 and payload["page"] == alert.page
    assert payload["subject"] == subject and "文件被拒收" in payload["text"]
    raw = request["body"].decode()
    assert RESIDENT_ID not in raw and MOBILE not in raw and "340104********1234" in payload["details"][0]


def test_held_alert_names_dataset_department_rule_count_and_page(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.alerts import alert_text, held_alert
    from pipelines.config import load_departments
    from pipelines.quality.gate import QualityGateError

    monkeypatch.setenv("CITYLAKE_REPORT_URL", "https://report.example.org/citylake/")
    monkeypatch.setenv("CITYLAKE_REGISTRY_DIR", str(PROJECT_ROOT / "schemas" / "sources"))
    settings = load_settings()
    exc = QualityGateError("std.enterprise held", dataset="enterprise", held=500, failures=[
        {"rule": "enterprise.uscc.check_digit", "description": "统一社会信用代码校验位", "failed": 312,
         "evaluated": 500, "threshold": 0.2},
        {"rule": "enterprise.district_code.code_list", "description": "行政区划代码在代码表内", "failed": 120,
         "evaluated": 500, "threshold": 0.2}])
    assert exc.rule == "enterprise.uscc.check_digit" and exc.count == 312
    alert = held_alert(settings, exc)
    departments = load_departments(settings)
    assert alert.page == "https://report.example.org/citylake/datasets/enterprise.html"
    assert departments[alert.department_code].name == "合肥市市场监督管理局"
    subject, body = alert_text(alert, departments)
    assert "批次暂停发布" in subject and "enterprise.uscc.check_digit" in subject and "312 行不通过" in subject
    assert "合肥市市场监督管理局" in body and "不通过：312 / 500 行，超过阈值 20%" in body
    assert "enterprise.district_code.code_list（行政区划代码在代码表内）：120 / 500 行" in body
    assert alert.page in body


def test_no_route_is_one_log_line_and_no_error(caplog: pytest.LogCaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.alerts import send_alert

    caplog.set_level(logging.INFO, logger="pipelines.alerts")
    assert send_alert(_rejected_alert(), _departments(smtp=None, http=None)) == []
    assert [r.levelname for r in caplog.records if r.name == "pipelines.alerts"] == ["INFO"]
    assert "has no alert route" in caplog.text

    caplog.clear()  # routes named, but no such Airflow connection
    monkeypatch.delenv("AIRFLOW_CONN_TEST_ALERTS_SMTP", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_TEST_ALERTS_HTTP", raising=False)
    assert send_alert(_rejected_alert(), _departments()) == []
    lines = [r.getMessage() for r in caplog.records if r.name == "pipelines.alerts"]
    assert len(lines) == 2 and all("is not configured" in line for line in lines), lines

    caplog.clear()  # a department the registry does not know
    assert send_alert(_rejected_alert(), {}) == []
    assert "not in the department registry" in caplog.text


def test_failing_routes_warn_and_never_raise(endpoint: _Endpoint, caplog: pytest.LogCaptureFixture,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from aiosmtpd.controller import Controller

    from pipelines.alerts import send_alert

    refusing, port = _MailSink(refuse=True), _free_port()
    controller = Controller(refusing, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        endpoint.status = 500
        monkeypatch.setenv("CITYLAKE_REPORT_URL", "https://report.example.org/citylake")  # no link warning here
        monkeypatch.setenv("AIRFLOW_CONN_TEST_ALERTS_SMTP", _smtp_conn(port))
        monkeypatch.setenv("AIRFLOW_CONN_TEST_ALERTS_HTTP", _http_conn(endpoint))
        caplog.set_level(logging.INFO, logger="pipelines.alerts")
        assert send_alert(_rejected_alert(), _departments()) == []
    finally:
        controller.stop()
    warnings = [r.getMessage() for r in caplog.records if r.name == "pipelines.alerts" and r.levelname == "WARNING"]
    assert len(warnings) == 2, warnings
    assert "mail via 'test_alerts_smtp' failed" in warnings[0] and "550" in warnings[0]
    assert "webhook 'test_alerts_http' failed" in warnings[1] and "500" in warnings[1]
    assert len(endpoint.requests) == 1 and refusing.envelopes == []

    caplog.clear()  # nothing listening at all
    monkeypatch.setenv("AIRFLOW_CONN_TEST_ALERTS_SMTP", _smtp_conn(_free_port()))
    monkeypatch.setenv("AIRFLOW_CONN_TEST_ALERTS_HTTP", json.dumps(
        {"conn_type": "http", "host": f"http://127.0.0.1:{_free_port()}/hook", "extra": {"timeout": 5}}))
    assert send_alert(_rejected_alert(), _departments()) == []
    assert sum(r.levelname == "WARNING" for r in caplog.records if r.name == "pipelines.alerts") == 2


def test_webhook_token_never_in_a_log_line(endpoint: _Endpoint, caplog: pytest.LogCaptureFixture,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A webhook carrying its token in the URL (``?key=…``, as WeCom robots do) or as userinfo: our log lines
    show the URL without them at every level, and the token is registered with Airflow's log masker, which
    redacts the HTTP provider's own lines (it prints the URL) in the task log."""
    from airflow.sdk._shared.secrets_masker import redact

    from pipelines.alerts import send_alert

    secret, password = "SECRETTOKEN123", "pw-9f8e7d6c5b"
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("CITYLAKE_REPORT_URL", "https://report.example.org/citylake")
    endpoint.status = 500
    for port in (endpoint.server_address[1], _free_port()):  # the endpoint answers 500, then nothing listens
        monkeypatch.setenv("AIRFLOW_CONN_TEST_ALERTS_HTTP", json.dumps(
            {"conn_type": "http", "host": f"http://citylake:{password}@127.0.0.1:{port}/cgi-bin/webhook/send?key={secret}",
             "extra": {"timeout": 5}}))
        assert send_alert(_rejected_alert(), _departments(smtp=None)) == []
    [request] = endpoint.requests
    assert request["path"] == f"/cgi-bin/webhook/send?key={secret}"  # delivered with its token all the same
    warnings = [r.getMessage() for r in caplog.records if r.name == "pipelines.alerts" and r.levelname == "WARNING"]
    assert len(warnings) == 2 and "500" in warnings[0] and "/cgi-bin/webhook/send?***" in warnings[1], warnings
    assert secret not in caplog.text and password not in caplog.text
    assert all(secret not in r.getMessage() and password not in r.getMessage() for r in caplog.records)
    # the provider's own lines (structlog, printed beside the capture): the task log's masker hides the token
    provider_line = f"Sending 'POST' to url: http://citylake:{password}@127.0.0.1/cgi-bin/webhook/send?key={secret}"
    assert secret not in redact(provider_line) and password not in redact(provider_line)


def test_file_names_in_rejected_alerts_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A drop file named after the person (name and resident ID): the alert names the file masked."""
    from pipelines.alerts import alert_text, rejected_alert
    from pipelines.registry import get_system

    monkeypatch.setenv("CITYLAKE_REGISTRY_DIR", str(PROJECT_ROOT / "schemas" / "sources"))
    settings = load_settings()
    system = get_system(settings.registry_dir, "population")
    table = system.all_tables[0].code
    alert = rejected_alert(settings, system, table, [
        {"file": f"/data/drops/population/张伟_{RESIDENT_ID}.csv", "reason": "空文件, 没有表头"},
        {"file": f"/data/drops/population/合肥市蜀山区长江西路100号-{MOBILE}.xlsx", "reason": None}])
    assert alert.details == ("张*_340104********1234.csv：空文件, 没有表头", "合肥市蜀山区***-138****5678.xlsx：无法读取")
    subject, body = alert_text(alert, _departments())
    for clear in ("张伟", RESIDENT_ID, "长江西路", "100号", MOBILE):
        assert clear not in subject + body, clear


def test_report_link_without_report_url(endpoint: _Endpoint, caplog: pytest.LogCaptureFixture,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """No CITYLAKE_REPORT_URL: an S3 lake links to the site's s3 location (not a worker's file path), and the
    first alert that goes out warns once per process that recipients cannot open the link."""
    import pipelines.alerts as alerts

    monkeypatch.delenv("CITYLAKE_REPORT_URL", raising=False)
    monkeypatch.setenv("CITYLAKE_WAREHOUSE", "s3://citylake-lake/warehouse/")
    assert alerts.report_url(load_settings(), "datasets/person.html") == "s3://citylake-lake/warehouse/report/datasets/person.html"
    # the shared artifacts root (compose: s3://lake/artifacts) is where report__quality publishes the site
    monkeypatch.setenv("CITYLAKE_ARTIFACTS_DIR", "s3://lake/artifacts")
    assert alerts.report_url(load_settings(), "index.html") == "s3://lake/artifacts/report/index.html"
    monkeypatch.delenv("CITYLAKE_ARTIFACTS_DIR")
    monkeypatch.setenv("CITYLAKE_WAREHOUSE", "file:///srv/lake/warehouse")
    assert alerts.report_url(load_settings(), "index.html") == (load_settings().lake_dir / "report" / "index.html").as_uri()

    monkeypatch.setattr(alerts, "_report_url_warned", False)
    monkeypatch.setenv("AIRFLOW_CONN_TEST_ALERTS_HTTP", _http_conn(endpoint))
    caplog.set_level(logging.INFO, logger="pipelines.alerts")
    for _ in range(2):
        assert alerts.send_alert(_rejected_alert(), _departments(smtp=None)) == ["http:test_alerts_http"]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "CITYLAKE_REPORT_URL" in r.getMessage()]
    assert len(warned) == 1 and _rejected_alert().page in warned[0], warned

    caplog.clear()  # a route named but no connection behind it: nothing goes out, nothing to warn about
    monkeypatch.setattr(alerts, "_report_url_warned", False)
    monkeypatch.delenv("AIRFLOW_CONN_TEST_ALERTS_HTTP")
    assert alerts.send_alert(_rejected_alert(), _departments(smtp=None)) == []
    assert "CITYLAKE_REPORT_URL" not in caplog.text
    monkeypatch.setenv("CITYLAKE_REPORT_URL", "https://report.example.org/citylake")  # set: never a warning
    monkeypatch.setenv("AIRFLOW_CONN_TEST_ALERTS_HTTP", _http_conn(endpoint))
    assert alerts.send_alert(_rejected_alert(), _departments(smtp=None)) == ["http:test_alerts_http"]
    assert "CITYLAKE_REPORT_URL" not in caplog.text


def _forget_asset_events(uri: str) -> None:
    """The first in-process Airflow import fixes the metadata DB for the session, so later DAG tests share
    it: leave no Asset event of this test behind for them to count."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        ids = [a.id for a in session.query(AssetModel).filter(AssetModel.uri == uri)]
        if ids:
            session.query(AssetEvent).filter(AssetEvent.asset_id.in_(ids)).delete(synchronize_session=False)


DROP_YML = """\
system: alertdrop
name: 告警测试投放
department: "{department}"
connection: drop_alertdrop
schedule: "0 4 * * *"
drop:
  location: "{location}"
  tables:
    - code: files
      glob: "*.csv"
      format: csv
      primary_key: [id]
"""


def test_load_task_alerts_on_rejected_files_and_succeeds(airflow_home: Path, smtp_sink: tuple[_MailSink, int],
                                                         endpoint: _Endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real path: ``ingest__<system>``'s ``load_table`` (dag.test) rejects a file, lands the good one,
    succeeds, and the owning department's routes (alerts_smtp / alerts_http) get the alert."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.pool import Pool

    sink, port = smtp_sink
    drops = airflow_home / "data" / "drops" / "alertdrop"
    drops.mkdir(parents=True)
    (drops / "good.csv").write_text("id,name\n1,甲\n2,乙\n", encoding="utf-8")
    (drops / f"bad_{MOBILE}.csv").write_bytes(b"")  # empty: rejected
    (airflow_home / "registry" / "alertdrop.yml").write_text(
        DROP_YML.format(department=POLICE, location=drops), encoding="utf-8")
    monkeypatch.setenv("AIRFLOW_CONN_ALERTS_SMTP", _smtp_conn(port))
    monkeypatch.setenv("AIRFLOW_CONN_ALERTS_HTTP", _http_conn(endpoint))
    monkeypatch.setenv("CITYLAKE_REPORT_URL", "https://report.example.org/citylake")
    Pool.create_or_update_pool("source__alertdrop", 2, "test", include_deferred=False)

    dag = DagBag(dag_folder=str(PROJECT_ROOT / "dags")).get_dag("ingest__alertdrop")
    try:
        run = dag.test(logical_date=datetime(2026, 11, 20, 4, tzinfo=TZ))
        [ti] = [ti for ti in run.get_task_instances() if ti.task_id == "load_table"]
        assert str(ti.state).endswith("success")  # rejected files do not fail the load
    finally:
        _forget_asset_events("iceberg://citylake/raw/alertdrop__files")

    envelope, subject, body = _mail(sink)
    assert envelope.rcpt_tos == ["ga.data@hefei.example.org"]
    assert subject == "【数据质量告警】告警测试投放 files：文件被拒收 1 个"
    link = "https://report.example.org/citylake/catalog/raw.alertdrop__files.html"  # no contract: its catalog entry
    assert f'<a href="{link}">' in body and "合肥市公安局" in body and "空文件" in body
    assert "138****5678" in body and MOBILE not in body
    [request] = endpoint.requests
    payload = json.loads(request["body"])
    assert payload["dataset_or_table"] == "raw.alertdrop__files" and payload["count"] == 1 and payload["page"] == link


def _failed_context(exc: BaseException) -> dict[str, Any]:
    from types import SimpleNamespace

    ti = SimpleNamespace(dag_id="ingest__population", task_id="load_table", map_index=0, try_number=4,
                         log_url="http://airflow.example/dags/ingest__population/runs/r/tasks/load_table?map_index=0")
    return {"ti": ti, "task": SimpleNamespace(owner="合肥市公安局", task_id="load_table"), "exception": exc}


def test_failure_callback_alerts_the_owner_and_is_silent_without_connections(
        endpoint: _Endpoint, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """dag_defaults.on_task_failure (every task's on_failure_callback) → alerts.alert_task_failed."""
    import pipelines.alerts as alerts
    from pipelines.quality.gate import QualityGateError

    monkeypatch.setattr(alerts, "load_departments", lambda settings=None: _departments(smtp=None))
    # no connection configured: nothing sent, nothing raised, one line
    monkeypatch.delenv("AIRFLOW_CONN_TEST_ALERTS_HTTP", raising=False)
    caplog.set_level(logging.INFO, logger="pipelines.alerts")
    assert alerts.alert_task_failed(_failed_context(RuntimeError("source unreachable"))) == []
    assert "is not configured" in caplog.text and endpoint.requests == []
    # configured: the department gets the failure, the task and the log link
    monkeypatch.setenv("AIRFLOW_CONN_TEST_ALERTS_HTTP", _http_conn(endpoint))
    assert alerts.alert_task_failed(_failed_context(RuntimeError("source unreachable"))) == ["http:test_alerts_http"]
    sent = json.loads(endpoint.requests[-1]["body"])
    assert sent["kind"] == "failed" and sent["dataset_or_table"] == "ingest__population.load_table[0]"
    assert "任务失败" in sent["subject"] and "source unreachable" in sent["text"] and sent["count"] == 4
    assert sent["page"].startswith("http://airflow.example/")
    # a held batch already sent its own alert; a run's bad params are the triggering person's to see
    held = RuntimeError("held")
    held.__cause__ = QualityGateError("std.x held")
    assert alerts.alert_task_failed(_failed_context(held)) == []
    assert alerts.alert_task_failed(_failed_context(RuntimeError("params: until … needs since"))) == []
    assert len(endpoint.requests) == 1
    # a callback never raises, even on a broken context
    assert alerts.alert_task_failed({}) == []


def test_failure_text_is_scrubbed_before_it_is_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    """failed_alert quotes at most 300 characters of the exception: cut first, a URL ending inside its userinfo
    (``postgresql://lake:S3cr``) no longer looked like userinfo and kept the start of the password."""
    import pipelines.alerts as alerts

    secret = "S3cretPassw0rdXYZ"
    head = "could not connect to the source " * 5
    url = f"postgresql://lake:{secret}@db.example:5432/city"
    # the 300-character cut falls inside the password
    pad = 300 - len(head) - 1 - len("postgresql://lake:S3c")
    message = head + "x" * pad + " " + url + " and more"
    assert message[:300].endswith("postgresql://lake:S3c")
    alert = alerts.failed_alert(load_settings(), _failed_context(RuntimeError(message)), _departments(smtp=None))
    assert alert is not None and alert.rule_text is not None
    assert "S3c" not in alert.rule_text and "lake:" not in alert.rule_text
    assert len(alert.rule_text) <= 300 and alert.rule_text.endswith("…")
    assert "postgresql://db.ex" in alert.rule_text  # the host stays: it says which source
