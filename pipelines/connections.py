"""Resolve a registry connection id to a URL. Secrets come from the environment or Airflow, never the repo.

Order: ``CITYLAKE_CONN_<ID>`` (a SQLAlchemy URL), ``AIRFLOW_CONN_<ID>`` (an Airflow URI), an Airflow
connection (only when running inside Airflow), then the registry's ``default_url`` (the embedded demo's
local SQLite files, which carry no secret).
"""

from __future__ import annotations

import os
import re

from sqlalchemy.engine import make_url

from pipelines.errors import ConfigError
from pipelines.registry import SourceSystem
from pipelines.settings import Settings

_AIRFLOW_SCHEMES = {
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mysql+pymysql",
    "sqlite": "sqlite",
}


def _from_airflow_uri(uri: str) -> str:
    scheme, _, rest = uri.partition("://")
    return f"{_AIRFLOW_SCHEMES.get(scheme, scheme)}://{rest}"


def _airflow_connection(conn_id: str) -> str | None:
    if not os.environ.get("AIRFLOW_CTX_DAG_ID"):
        return None  # not inside an Airflow task: don't pay Airflow's import or touch its database
    try:
        from airflow.sdk import BaseHook

        return _from_airflow_uri(BaseHook.get_connection(conn_id).get_uri())
    except Exception:
        return None


def connection_url(conn_id: str) -> str | None:
    """The URL set for a connection id, or None: ``CITYLAKE_CONN_<ID>`` (as given), ``AIRFLOW_CONN_<ID>`` (an
    Airflow URI, its scheme mapped to the SQLAlchemy driver), an Airflow connection (inside a task only). No
    default: a caller with a demo fallback (``resolve_url``) applies its own."""
    env_id = conn_id.upper()
    url = os.environ.get(f"CITYLAKE_CONN_{env_id}")
    if not url and os.environ.get(f"AIRFLOW_CONN_{env_id}"):
        url = _from_airflow_uri(os.environ[f"AIRFLOW_CONN_{env_id}"])
    return url or _airflow_connection(conn_id)


def resolve_url(system: SourceSystem, settings: Settings) -> str:
    """The source URL of a system; ConfigError (without any secret) when nothing provides one."""
    env_id = system.connection.upper()
    url = connection_url(system.connection)
    if not url and system.default_url:
        url = system.default_url
        if url.startswith("sqlite:///"):
            url = "sqlite:///" + settings.resolve(url.removeprefix("sqlite:///"))
    if not url:
        raise ConfigError(
            f"system {system.system}: connection {system.connection!r} is not set: export "
            f"CITYLAKE_CONN_{env_id}=<SQLAlchemy URL> or add Airflow connection {system.connection!r}"
        )
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("mysql://") or url.startswith("mariadb://"):
        url = "mysql+pymysql://" + url.split("://", 1)[1]
    return url


def describe(url: str) -> str:
    """Where a URL points, for messages: driver, host, port and database; never user or password."""
    try:
        u = make_url(url)
    except Exception:
        return "<unparseable url>"
    if u.get_backend_name() == "sqlite":
        return f"sqlite:{u.database}"
    port = f":{u.port}" if u.port else ""
    return f"{u.get_backend_name()}://{u.host}{port}/{u.database or ''}"


def scrub(message: str, url: str) -> str:
    """Remove the password of ``url`` from a driver's message, whatever the driver put in it."""
    try:
        password = make_url(url).password
    except Exception:
        password = None
    if password:
        message = message.replace(str(password), "***")
    return re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", message)


# A URL's secrets for log lines: userinfo (``user:token@``), the query string (``?key=…``, the way
# WeCom/DingTalk-style webhooks carry their token), the fragment, and path segments that look like
# tokens (16+ characters of letters and digits, e.g. Slack's or Feishu's webhook paths).
_USERINFO = re.compile(r"(?<=://)[^/?#\s@'\"<>]+@")
_QUERY = re.compile(r"(/[^\s?#'\"<>]*)[?#][^\s'\"<>()]*")
_TOKEN_SEGMENT = re.compile(r"(?<=/)(?=[\w-]*\d)(?=[\w-]*[A-Za-z])[\w-]{16,}(?=[/?#\s'\"<>)]|$)")


def scrub_urls(message: str) -> str:
    """``message`` with every URL or URL path in it stripped of what may be a secret: userinfo, query
    string and fragment (``?***``), token-like path segments (``***``). For exception texts that quote the
    URL they failed on (requests: ``Max retries exceeded with url: /send?key=…``)."""
    message = _USERINFO.sub("", message)
    message = _QUERY.sub(r"\1?***", message)
    return _TOKEN_SEGMENT.sub("***", message)


def url_secrets(url: str) -> list[str]:
    """The parts of ``url`` ``scrub_urls`` hides (userinfo, query values, fragment, token-like path
    segments), to register with a log masker that redacts them wherever else the URL is printed."""
    from urllib.parse import parse_qsl, urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    # short values (msgtype=text) are words, not tokens: masking them would blank them in every log line;
    # a user name is a token only when it stands alone (https://<token>@host)
    alone = parts.username if parts.username and parts.password is None else ""
    found = [alone, parts.fragment, *(v for _k, v in parse_qsl(parts.query))]
    found = [s for s in found if len(s) >= 8] + [parts.password or ""]
    found += [m.group(0) for m in _TOKEN_SEGMENT.finditer(parts.path)]
    return [s for s in dict.fromkeys(found) if s]
