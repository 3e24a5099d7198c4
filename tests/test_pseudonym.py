"""Keyed pseudonyms for sharing: per-consumer keys, stable values, nulls kept, no key ever in a message."""

from __future__ import annotations

import datetime as dt
import hmac
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import unavailable

from pipelines.privacy.pseudonym import (
    MASTER_CONN,
    MASTER_ENV,
    MIN_KEY_BYTES,
    MissingKeyError,
    consumer_key,
    master_key,
    pseudonymize,
)

MASTER = b"test-only-master-key-0123456789abcdef"
RSJ, GJJ = "113401000030088844", "123401004850066616"
ROOT = Path(__file__).resolve().parent.parent
IDS = ["340104199003071234", "34010419900307123X", "340102198512120016"]


def _expected(key: bytes, text: str) -> str:
    return hmac.digest(key, text.encode("utf-8"), "sha256").hex()


@pytest.fixture
def no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (MASTER_ENV, f"AIRFLOW_CONN_{MASTER_CONN.upper()}", "AIRFLOW_CTX_DAG_ID"):
        monkeypatch.delenv(name, raising=False)


def test_consumer_keys_are_hmac_of_the_code_and_differ() -> None:
    assert consumer_key(MASTER, RSJ) == hmac.digest(MASTER, b"citylake/share/v1/" + RSJ.encode(), "sha256")
    assert consumer_key(MASTER, RSJ) == consumer_key(MASTER, RSJ)
    assert consumer_key(MASTER, RSJ) != consumer_key(MASTER, GJJ)
    assert consumer_key(MASTER, RSJ) != consumer_key(MASTER + b"x", RSJ)


def test_pseudonyms_are_hex_hmac_stable_per_consumer_and_differ_between_consumers() -> None:
    rsj, gjj = consumer_key(MASTER, RSJ), consumer_key(MASTER, GJJ)
    first = pseudonymize(pa.array(IDS), rsj)
    assert first.type == pa.string()
    assert first.to_pylist() == [_expected(rsj, v) for v in IDS]
    # stable: a second delivery (another call, chunked, in another order) gives the same pseudonyms
    again = pseudonymize(pa.chunked_array([IDS[2:], IDS[:2]]), rsj)
    assert again.to_pylist() == [first[2].as_py(), first[0].as_py(), first[1].as_py()]
    other = pseudonymize(pa.array(IDS), gjj).to_pylist()
    assert not set(other) & set(first.to_pylist())


def test_nulls_stay_null_on_both_paths() -> None:
    key = consumer_key(MASTER, RSJ)
    unique = pa.array([IDS[0], None, IDS[1], None, IDS[2]])
    repeated = pa.array([IDS[0], None] * 5000 + [IDS[1]])  # few distinct values: the dictionary path
    for values in (unique, repeated):
        out = pseudonymize(values, key)
        assert out.null_count == values.null_count
        assert [o is None for o in out.to_pylist()] == [v is None for v in values.to_pylist()]
        assert {o for o in out.to_pylist() if o} == {_expected(key, v) for v in values.to_pylist() if v}
    assert pseudonymize(pa.array([None, None], pa.string()), key).to_pylist() == [None, None]
    assert pseudonymize(pa.array([], pa.string()), key).to_pylist() == []
    assert pseudonymize(pa.chunked_array([], pa.string()), key).to_pylist() == []


def test_non_text_values_are_hashed_by_their_text() -> None:
    key = consumer_key(MASTER, RSJ)
    assert pseudonymize(pa.array([42, None]), key).to_pylist() == [_expected(key, "42"), None]
    day = pa.array([dt.date(2026, 1, 31)])
    assert pseudonymize(day, key).to_pylist() == [_expected(key, "2026-01-31")]
    assert pseudonymize(pa.array(IDS).dictionary_encode(), key).to_pylist() == [_expected(key, v) for v in IDS]


def test_many_values_match_hmac_digest() -> None:
    key = consumer_key(MASTER, GJJ)
    values = [f"3401041990{i:08d}" for i in range(70_000)]  # more than one slice of the hashing loop
    out = pseudonymize(pa.array(values), key).to_pylist()
    assert [out[i] for i in (0, 65_535, 65_536, 69_999)] == [_expected(key, values[i]) for i in (0, 65_535, 65_536, 69_999)]
    assert len(set(out)) == len(values)


def test_master_key_from_the_environment(monkeypatch: pytest.MonkeyPatch, no_key: None) -> None:
    monkeypatch.setenv(MASTER_ENV, MASTER.decode())
    assert master_key() == MASTER


def test_missing_master_key_raises_without_any_key(monkeypatch: pytest.MonkeyPatch, no_key: None) -> None:
    with pytest.raises(MissingKeyError) as err:
        master_key()
    assert str(err.value) == ("共享主密钥未配置: set CITYLAKE_SHARE_MASTER_KEY or the Airflow connection "
                              "citylake_share_master_key (password)")
    monkeypatch.setenv(MASTER_ENV, "")  # empty counts as unset
    with pytest.raises(MissingKeyError, match="未配置"):
        master_key()


def test_short_master_key_is_refused_and_not_quoted(monkeypatch: pytest.MonkeyPatch, no_key: None) -> None:
    short = "s3cr3t-but-short-k3y"
    monkeypatch.setenv(MASTER_ENV, short)
    with pytest.raises(MissingKeyError) as err:
        master_key()
    message = str(err.value)
    assert f"只有 {len(short)} 字节" in message and f"至少需要 {MIN_KEY_BYTES} 字节" in message
    assert short not in message and short[:8] not in message
    monkeypatch.setenv(MASTER_ENV, "x" * (MIN_KEY_BYTES - 1))
    with pytest.raises(MissingKeyError):
        master_key()
    monkeypatch.setenv(MASTER_ENV, "x" * MIN_KEY_BYTES)
    assert len(master_key()) == MIN_KEY_BYTES


AIRFLOW_SCRIPT = """\
import sys
try:
    import airflow.sdk  # noqa: F401
except ImportError as exc:
    print(f"airflow.sdk cannot be imported ({exc})")
    sys.exit(3)
from pipelines.privacy.pseudonym import MissingKeyError, master_key
try:
    print("key", master_key().decode())
except MissingKeyError as exc:
    print("error", exc)
"""


def _master_key_under_airflow(tmp_path: Path, password: str) -> str:
    """``master_key()`` in a fresh interpreter with only the Airflow connection set: importing Airflow fixes
    its home and metadata database for the whole process, which would leak into the DAG tests after this one."""
    env = {k: v for k, v in os.environ.items() if k not in (MASTER_ENV, "AIRFLOW_CTX_DAG_ID")}
    env.update({"AIRFLOW_HOME": str(tmp_path / "airflow"),
                f"AIRFLOW_CONN_{MASTER_CONN.upper()}": f'{{"conn_type": "generic", "password": "{password}"}}'})
    ran = subprocess.run([sys.executable, "-c", AIRFLOW_SCRIPT], capture_output=True, text=True, env=env, cwd=ROOT)
    if ran.returncode == 3:  # the Airflow extra is part of the project: missing it fails under CI=true
        unavailable(ran.stdout.strip())
    assert ran.returncode == 0, ran.stderr
    return ran.stdout.strip()


def test_master_key_from_the_airflow_connection(tmp_path: Path) -> None:
    secret = "airflow-held-master-key-0123456789abcdef"
    assert _master_key_under_airflow(tmp_path, secret) == f"key {secret}"
    short = _master_key_under_airflow(tmp_path, "too-short-0")
    assert short.startswith("error ") and "Airflow connection citylake_share_master_key 只有 11 字节" in short
    assert "too-short-0" not in short
