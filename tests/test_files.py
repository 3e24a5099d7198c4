"""File-drop extraction: listing, streaming every format and encoding, declared types, rejection with
the right line, bounded memory, and S3 through moto's server mode over HTTP."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.errors import ConfigError, FileRejected
from pipelines.extract.drops import DropFile, list_drop_files, read_drop_file, reject_file, s3_client
from pipelines.extract.drops import opening as files
from pipelines.registry import DropTable, FileDrop
from pipelines.settings import Settings

SHANGHAI = pa.timestamp("us", tz="Asia/Shanghai")


@pytest.fixture
def settings(lake_settings: Settings, tmp_path: Path) -> Settings:
    return dataclasses.replace(lake_settings, root=tmp_path, rejected_dir=str(tmp_path / "rejected"))


def make_table(**kw: Any) -> DropTable:
    base: dict[str, Any] = {"code": "t", "primary_key": ["id"], "glob": "*.csv", "format": "csv"}
    base.update(kw)
    return DropTable(**base)


def local_file(path: Path, base: Path | None = None) -> DropFile:
    st = path.stat()
    name = path.relative_to(base or path.parent).as_posix()
    return DropFile(str(path), name, st.st_size, f"{st.st_size}-{st.st_mtime_ns}")


def read_all(f: DropFile, table: DropTable, settings: Settings, **kw: Any) -> pa.Table:
    batches = list(read_drop_file(f, table, settings, **kw))
    assert len({b.schema for b in batches}) == 1, "every batch of one file has the same schema"
    return pa.Table.from_batches(batches)


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def rejected(f: DropFile, table: DropTable, settings: Settings) -> FileRejected:
    with pytest.raises(FileRejected) as info:
        for _ in read_drop_file(f, table, settings):
            pass
    assert "\n" not in info.value.reason
    assert info.value.file == f.name
    return info.value


# --- listing ------------------------------------------------------------------------------------


def test_list_local_glob_sorted_skips_hidden_and_resolves_against_root(settings: Settings) -> None:
    drop_dir = settings.root / "drops" / "air"
    for name in ["b.csv", "a.csv", ".partial.csv", "~$lock.csv", "notes.txt", "sub/c.csv"]:
        write(drop_dir / name, "id\n1\n")
    drop = FileDrop(location="drops/air", tables=[make_table()])
    listed = list_drop_files(drop, make_table(), settings)
    assert [f.name for f in listed] == ["a.csv", "b.csv"]
    assert listed[0].uri == str((drop_dir / "a.csv").resolve())
    assert listed[0].size == 5
    deep = list_drop_files(drop, make_table(glob="**/*.csv"), settings)
    assert [f.name for f in deep] == ["a.csv", "b.csv", "sub/c.csv"]

    before = listed[0].fingerprint
    write(drop_dir / "a.csv", "id\n1\n2\n")
    assert list_drop_files(drop, make_table(), settings)[0].fingerprint != before


def test_list_missing_local_folder_is_a_clear_error(settings: Settings) -> None:
    from pipelines.errors import SourceError

    with pytest.raises(SourceError, match="does not exist"):
        list_drop_files(FileDrop(location="nope", tables=[make_table()]), make_table(), settings)


# --- CSV encodings ------------------------------------------------------------------------------

CHINESE_CSV = '编号,姓名,区县,备注\n007,张三, 蜀山区 ,\n008,李四,包河区,"含,逗号"\n'
CHINESE_COLUMNS = {"编号": "id", "姓名": "name", "区县": "district", "备注": "note"}


def expect_chinese(table: pa.Table) -> None:
    assert table.column_names == ["id", "name", "district", "note"]
    assert all(t == pa.string() for t in table.schema.types)
    assert table.to_pylist() == [
        {"id": "007", "name": "张三", "district": " 蜀山区 ", "note": None},  # exactly as received; empty → null
        {"id": "008", "name": "李四", "district": "包河区", "note": "含,逗号"},
    ]


@pytest.mark.parametrize(
    ("encoding", "declared", "prefix"),
    [
        ("utf-8", "utf-8", b""),
        ("utf-8", "utf-8", b"\xef\xbb\xbf"),  # BOM although declared utf-8
        ("utf-8", "utf-8-sig", b"\xef\xbb\xbf"),
        ("gbk", "gbk", b""),
        ("gbk", "gb18030", b""),  # plain GBK read as GB18030
        ("gb18030", "gb18030", b""),
    ],
)
def test_csv_encodings(settings: Settings, tmp_path: Path, encoding: str, declared: str, prefix: bytes) -> None:
    path = tmp_path / "people.csv"
    path.write_bytes(prefix + CHINESE_CSV.encode(encoding))
    table = make_table(encoding=declared, columns=CHINESE_COLUMNS)
    expect_chinese(read_all(local_file(path), table, settings))


@pytest.mark.parametrize("chunk", [3, 7, 4 << 20])
def test_gb18030_characters_outside_gbk(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(files, "READ_CHUNK_BYTES", chunk)  # multi-byte characters split across chunks
    text = "id,name\n1,𠀀\n2,䶮\n3,王𪚥\n"
    with pytest.raises(UnicodeEncodeError):
        text.encode("gbk")
    path = write(tmp_path / "rare.csv", text, "gb18030")
    out = read_all(local_file(path), make_table(encoding="gb18030"), settings)
    assert out.column("name").to_pylist() == ["𠀀", "䶮", "王𪚥"]


def test_tab_delimiter_and_quoted_newlines(settings: Settings, tmp_path: Path) -> None:
    path = write(tmp_path / "t.tsv", 'id\tnote\n1\t"第一行\n第二行"\n2\tx\n')
    out = read_all(local_file(path), make_table(delimiter="\t"), settings)
    assert out.column("note").to_pylist() == ["第一行\n第二行", "x"]


def test_header_only_yields_one_empty_batch_with_the_columns(settings: Settings, tmp_path: Path) -> None:
    path = write(tmp_path / "h.csv", "id,amount\n")
    batches = list(read_drop_file(local_file(path), make_table(types={"amount": "decimal(12,2)"}), settings))
    assert len(batches) == 1 and batches[0].num_rows == 0
    assert batches[0].schema.names == ["id", "amount"]
    assert batches[0].schema.field("amount").type == pa.decimal128(12, 2)


def test_empty_file_is_rejected(settings: Settings, tmp_path: Path) -> None:
    path = write(tmp_path / "e.csv", "\n\n")
    assert "empty" in rejected(local_file(path), make_table(), settings).reason


def test_unmapped_chinese_column_is_a_config_error(settings: Settings, tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", "id,姓名\n1,张三\n")
    with pytest.raises(ConfigError, match="姓名"):
        list(read_drop_file(local_file(path), make_table(), settings))


# --- declared types -----------------------------------------------------------------------------

TYPES = {
    "id": "int64",
    "amount": "decimal(12,2)",
    "rate": "float64",
    "day": "date",
    "at": "timestamp",
    "ok": "bool",
    "code": "string",
}


def test_csv_declared_types(settings: Settings, tmp_path: Path) -> None:
    path = write(
        tmp_path / "typed.csv",
        "id,amount,rate,day,at,ok,code\n"
        "1,12.5,0.25,2024-01-05,2024-01-05 10:00:00,是,0012\n"
        " 2 ,-3,1e3,2024/02/29,2024-01-05T02:00:00Z,false,x\n"
        "3,,,,,,\n",
    )
    out = read_all(local_file(path), make_table(types=TYPES), settings)
    assert out.schema.field("id").type == pa.int64()
    assert out.schema.field("amount").type == pa.decimal128(12, 2)
    assert out.schema.field("at").type == SHANGHAI
    rows = out.to_pylist()
    assert rows[0]["amount"] == Decimal("12.50") and rows[1]["amount"] == Decimal("-3.00")
    assert rows[1]["id"] == 2 and rows[1]["rate"] == 1000.0
    assert rows[0]["day"] == date(2024, 1, 5) and rows[1]["day"] == date(2024, 2, 29)
    # naive 10:00 is Shanghai time = 02:00 UTC, the same instant as the explicit Z value
    assert rows[0]["at"].astimezone(UTC) == datetime(2024, 1, 5, 2, tzinfo=UTC)
    assert rows[1]["at"] == rows[0]["at"]
    assert (rows[0]["ok"], rows[1]["ok"]) == (True, False)
    assert rows[0]["code"] == "0012"
    assert all(v is None for k, v in rows[2].items() if k != "id")


def test_value_that_does_not_cast_names_line_and_column(settings: Settings, tmp_path: Path) -> None:
    # line 3-4 is one record (quoted newline) and line 5 is blank: the bad value sits on line 7
    path = write(
        tmp_path / "bad.csv",
        'id,金额,note\n1,1.00,a\n2,2.00,"two\nlines"\n\n3,3.00,b\n4,四元,c\n5,5.00,d\n',
    )
    table = make_table(columns={"金额": "amount"}, types={"amount": "decimal(12,2)"})
    exc = rejected(local_file(path), table, settings)
    assert exc.line == 7
    assert "第 7 行" in exc.reason and "金额" in exc.reason and "'四**' (2 chars)" in exc.reason  # privacy.quote


def test_decimal_with_too_many_places_is_rejected_not_rounded(settings: Settings, tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "id,amount\n1,1.5\n2,1.555\n")
    exc = rejected(local_file(path), make_table(types={"amount": "decimal(12,2)"}), settings)
    assert exc.line == 3


def test_bad_timestamp_line_in_a_later_batch(settings: Settings, tmp_path: Path) -> None:
    lines = [f"{i},2024-01-01 00:00:{i % 60:02d}" for i in range(1, 101)]
    lines[76] = "77,not a time"
    path = write(tmp_path / "ts.csv", "id,at\n" + "\n".join(lines) + "\n")
    table = make_table(types={"at": "timestamp"})
    with pytest.raises(FileRejected) as info:
        for batch in read_drop_file(local_file(path), table, settings, batch_rows=10):
            assert batch.num_rows <= 10
    assert info.value.line == 78


# --- rejection: encoding and structure ----------------------------------------------------------


@pytest.mark.parametrize("chunk", [5, 4 << 20])
@pytest.mark.parametrize("declared", ["utf-8", "gbk", "gb18030"])
def test_invalid_bytes_give_the_line_of_the_first_bad_byte(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int, declared: str
) -> None:
    monkeypatch.setattr(files, "READ_CHUNK_BYTES", chunk)
    codec = "utf-8" if declared == "utf-8" else "gbk"
    good = "".join(f"{i},合肥市\n" for i in range(1, 40)).encode(codec)
    bad = b"40,\xff\xfe\xff\n" if declared != "utf-8" else b"40,\xe5\x90\n"  # truncated/invalid sequence
    path = tmp_path / "enc.csv"
    path.write_bytes(b"id,city\n" + good + bad + b"41,x\n")
    exc = rejected(local_file(path), make_table(encoding=declared), settings)
    assert exc.line == 41
    assert f"第 {exc.line} 行" in exc.reason


def test_gbk_file_declared_utf8_is_rejected_at_first_chinese_line(settings: Settings, tmp_path: Path) -> None:
    path = write(tmp_path / "g.csv", "id,name\n1,abc\n2,张三\n", "gbk")
    exc = rejected(local_file(path), make_table(), settings)
    assert exc.line == 3 and "UTF-8" in exc.reason


@pytest.mark.parametrize("declared", ["utf-8", "gbk"])
def test_wrong_field_count_names_that_rows_line(settings: Settings, tmp_path: Path, declared: str) -> None:
    text = "id,a,b,c,d,e,f\n" + "".join(f"{i},1,2,3,4,5,6\n" for i in range(1, 15)) + "\n\n15,1,2,3,4\n16,1,2,3,4,5,6\n"
    path = write(tmp_path / "w.csv", text, declared)
    exc = rejected(local_file(path), make_table(encoding=declared), settings)
    assert exc.line == 18
    assert exc.reason.startswith("第 18 行: 字段数 5, 表头 7")


# --- bounded memory -----------------------------------------------------------------------------


def _big_csv(path: Path, target_bytes: int, encoding: str = "utf-8") -> int:
    row = "{i},合肥市蜀山区某某街道某某社区,34010419900101{n:04d},2024-01-05 10:00:00,{i}.25,备注备注备注备注\n"
    rows = 0
    with open(path, "w", encoding=encoding, newline="") as out:
        out.write("id,address,resident_id,at,amount,note\n")
        while out.tell() < target_bytes:
            out.write("".join(row.format(i=rows + k, n=(rows + k) % 10000) for k in range(10_000)))
            rows += 10_000
    return rows


class CountingReader(io.RawIOBase):
    """Counts the bytes pulled from the drop file."""

    def __init__(self, raw: Any) -> None:
        super().__init__()
        self.raw = raw
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.bytes_read += len(data)
        return data


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[CountingReader]:
    opened: list[CountingReader] = []
    original = files.open_binary

    @contextlib.contextmanager
    def counting(f: DropFile, settings: Settings) -> Iterator[Any]:
        with original(f, settings) as raw:
            opened.append(CountingReader(raw))
            yield opened[-1]

    monkeypatch.setattr(files, "open_binary", counting)
    return opened


def test_fifty_megabyte_csv_streams_in_bounded_batches(
    settings: Settings, tmp_path: Path, counted: list[CountingReader], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrow reads up to 32 blocks ahead; small blocks make "long before the end" visible on 50 MB
    monkeypatch.setattr(files, "BLOCK_BYTES", 256 << 10)
    monkeypatch.setattr(files, "READ_CHUNK_BYTES", 1 << 20)
    path = tmp_path / "big.csv"
    rows = _big_csv(path, 50 << 20)
    size = path.stat().st_size
    table = make_table(types={"id": "int64", "at": "timestamp", "amount": "decimal(14,2)"})
    batch_rows = 50_000
    seen = batches = peak = 0
    for batch in read_drop_file(local_file(path), table, settings, batch_rows=batch_rows):
        assert batch.num_rows <= batch_rows
        seen += batch.num_rows
        batches += 1
        peak = max(peak, pa.total_allocated_bytes())
        if batches == 1:  # the first batch arrives long before the whole file has been read
            assert counted[-1].bytes_read < size // 2
    assert counted[-1].bytes_read == size
    assert seen == rows and batches >= 5
    assert peak < size * 0.8, f"Arrow held {peak} bytes for a {size}-byte file"
    assert batch.schema.field("at").type == SHANGHAI


def test_gbk_csv_streams_in_batches(
    settings: Settings, tmp_path: Path, counted: list[CountingReader], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "BLOCK_BYTES", 128 << 10)
    monkeypatch.setattr(files, "READ_CHUNK_BYTES", 256 << 10)
    path = tmp_path / "big_gbk.csv"
    rows = _big_csv(path, 12 << 20, "gbk")
    size = path.stat().st_size
    peak = 0
    count = 0
    total = 0
    for batch in read_drop_file(local_file(path), make_table(encoding="gbk"), settings, batch_rows=20_000):
        assert batch.num_rows <= 20_000
        count += 1
        total += batch.num_rows
        peak = max(peak, pa.total_allocated_bytes())
        if count == 1:
            assert batch.column("address")[0].as_py() == "合肥市蜀山区某某街道某某社区"
            assert counted[-1].bytes_read < size // 2
    assert total == rows and count >= 5
    assert peak < size  # the UTF-8 form is ~1.4x the GBK size: never held whole


def test_abandoned_transcoding_read_does_not_crash_the_interpreter_at_exit(tmp_path: Path) -> None:
    """Arrow's read-ahead thread pulls GBK through Python; an unfinished generator at exit must not abort."""
    path = tmp_path / "gbk.csv"
    _big_csv(path, 20 << 20, "gbk")
    script = f"""
from pipelines.extract.drops import DropFile, read_drop_file
from pipelines.registry import DropTable
from pipelines.settings import load_settings
t = DropTable(code="t", primary_key=["id"], glob="*.csv", format="csv", encoding="gbk")
f = DropFile({str(path)!r}, "gbk.csv", 0, "x")
kept = read_drop_file(f, t, load_settings(), batch_rows=1000)
next(kept)
print("exiting with a live reader")
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "exiting with a live reader" in done.stdout


# --- JSON lines, Parquet, XLSX ------------------------------------------------------------------


def test_jsonl_keeps_its_types_then_casts_declared(settings: Settings, tmp_path: Path) -> None:
    lines = [
        {"编号": 1, "amount": 12.5, "at": "2024-01-05 10:00:00", "flag": True, "tags": ["a"], "note": "合肥"},
        {"编号": 2, "amount": 3, "at": "2024-01-05T10:00:00+08:00", "flag": False, "tags": [], "note": None},
    ]
    path = write(tmp_path / "x.jsonl", "\ufeff" + "\n".join(json.dumps(r, ensure_ascii=False) for r in lines) + "\n\n")
    table = make_table(
        format="jsonl", glob="*.jsonl", columns={"编号": "id"}, types={"amount": "decimal(10,2)", "at": "timestamp"}
    )
    out = read_all(local_file(path), table, settings)
    assert out.schema.field("id").type == pa.int64()
    assert out.schema.field("flag").type == pa.bool_()
    assert out.schema.field("tags").type == pa.list_(pa.string())
    assert out.schema.field("amount").type == pa.decimal128(10, 2)
    assert out.schema.field("at").type == SHANGHAI
    assert out.column("amount").to_pylist() == [Decimal("12.50"), Decimal("3.00")]
    at = out.column("at").to_pylist()
    assert at[0] == at[1]


def test_jsonl_invalid_utf8_is_rejected_with_its_line(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "u.jsonl"
    path.write_bytes(b'{"id": 1, "name": "a"}\n{"id": 2, "name": "\xe5\x90"}\n')
    exc = rejected(local_file(path), make_table(format="jsonl"), settings)
    assert exc.line == 2 and "UTF-8" in exc.reason


def test_jsonl_gbk(settings: Settings, tmp_path: Path) -> None:
    path = write(tmp_path / "g.jsonl", '{"id": 1, "name": "张三"}\n{"id": 2, "name": "李四"}\n', "gbk")
    out = read_all(local_file(path), make_table(format="jsonl", encoding="gbk"), settings)
    assert out.column("name").to_pylist() == ["张三", "李四"]


def test_jsonl_bad_line_and_late_field(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = make_table(format="jsonl")
    bad = write(tmp_path / "bad.jsonl", '{"id": 1}\n\n{"id": 2}\n{"id": 3\n')
    exc = rejected(local_file(bad), table, settings)
    assert exc.line == 4
    monkeypatch.setattr(files, "BLOCK_BYTES", 64)  # the new field shows up after the first block
    late = write(tmp_path / "late.jsonl", "".join(f'{{"id": {i}}}\n' for i in range(20)) + '{"id": 20, "extra": "x"}\n')
    exc = rejected(local_file(late), table, settings)
    assert exc.line == 21 and "extra" in exc.reason
    # declaring the late field fixes it
    out = read_all(local_file(late), make_table(format="jsonl", types={"extra": "string"}), settings)
    assert out.num_rows == 21


def test_parquet_keeps_types_and_naive_timestamps_become_shanghai(settings: Settings, tmp_path: Path) -> None:
    source = pa.table(
        {
            "ID": pa.array([1, 2, 3], pa.int32()),
            "金额": pa.array([1.5, 2.25, None]),
            "at": pa.array([datetime(2024, 1, 5, 10), None, datetime(2024, 6, 1)], pa.timestamp("ms")),
            "note": ["a", None, "c"],
        }
    )
    path = tmp_path / "p.parquet"
    pq.write_table(source, path, row_group_size=2)
    table = make_table(
        format="parquet", columns={"金额": "amount"}, types={"id": "int64", "at": "timestamp", "amount": "decimal(8,2)"}
    )
    batches = list(read_drop_file(local_file(path), table, settings, batch_rows=2))
    assert [b.num_rows for b in batches] == [2, 1]
    out = pa.Table.from_batches(batches)
    assert out.column_names == ["id", "amount", "at", "note"]
    assert out.schema.field("id").type == pa.int64()
    assert out.schema.field("at").type == SHANGHAI
    assert out.column("at")[0].as_py().astimezone(UTC) == datetime(2024, 1, 5, 2, tzinfo=UTC)
    assert out.column("amount").to_pylist() == [Decimal("1.50"), Decimal("2.25"), None]


def test_parquet_garbage_is_rejected(settings: Settings, tmp_path: Path) -> None:
    path = write(tmp_path / "x.parquet", "not parquet at all")
    assert "Parquet" in rejected(local_file(path), make_table(format="parquet"), settings).reason


def _xlsx(path: Path, rows: list[list[Any]], sheet: str = "数据", first_sheet: str | None = "说明") -> Path:
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    if first_sheet:
        ws.title = first_sheet
        ws.append(["这是说明页"])
        ws = wb.create_sheet(sheet)
    else:
        ws.title = sheet
    for row in rows:
        ws.append(row)
    wb.save(path)
    return path


def test_xlsx_cells_as_text_and_declared_types(settings: Settings, tmp_path: Path) -> None:
    path = _xlsx(
        tmp_path / "r.xlsx",
        [
            ["编号", "金额", "日期", "时间", "备注", "代码"],
            [1, 12.5, date(2024, 1, 5), datetime(2024, 1, 5, 10, 30), "合肥", "0012"],
            [None, None, None, None, None, None],  # an empty row is skipped
            [2, 3, date(2024, 2, 29), datetime(2024, 1, 5, 23, 0), None, True],
        ],
    )
    table = make_table(
        format="xlsx",
        glob="*.xlsx",
        sheet="数据",
        columns={"编号": "id", "金额": "amount", "日期": "day", "时间": "at", "备注": "note", "代码": "code"},
        types={"amount": "decimal(10,2)", "day": "date", "at": "timestamp"},
    )
    out = read_all(local_file(path), table, settings)
    assert out.column("id").to_pylist() == ["1", "2"]  # undeclared: text exactly as shown
    assert out.column("note").to_pylist() == ["合肥", None]
    assert out.column("code").to_pylist() == ["0012", "true"]
    assert out.column("amount").to_pylist() == [Decimal("12.50"), Decimal("3.00")]
    assert out.column("day").to_pylist() == [date(2024, 1, 5), date(2024, 2, 29)]
    assert out.schema.field("at").type == SHANGHAI
    assert out.column("at")[0].as_py().astimezone(UTC) == datetime(2024, 1, 5, 2, 30, tzinfo=UTC)


def test_xlsx_batches_bad_value_row_and_missing_sheet(settings: Settings, tmp_path: Path) -> None:
    rows: list[list[Any]] = [["id", "amount"]] + [[i, i * 1.5] for i in range(1, 26)]
    rows[20][1] = "n/a"  # sheet row 21
    path = _xlsx(tmp_path / "b.xlsx", rows, first_sheet=None)
    batches = list(read_drop_file(local_file(path), make_table(format="xlsx"), settings, batch_rows=10))
    assert [b.num_rows for b in batches] == [10, 10, 5]
    with pytest.raises(FileRejected) as info:
        list(
            read_drop_file(
                local_file(path), make_table(format="xlsx", types={"amount": "float64"}), settings, batch_rows=10
            )
        )
    assert info.value.line == 21 and "n/a" in info.value.reason
    exc = rejected(local_file(path), make_table(format="xlsx", sheet="没有"), settings)
    assert "没有" in exc.reason


def test_xlsx_garbage_is_rejected(settings: Settings, tmp_path: Path) -> None:
    path = write(tmp_path / "g.xlsx", "not a zip")
    assert "XLSX" in rejected(local_file(path), make_table(format="xlsx"), settings).reason


def test_xlsx_table_not_at_a1_reports_sheet_rows(settings: Settings, tmp_path: Path) -> None:
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws["B3"], ws["C3"] = "id", "amount"
    ws["B4"], ws["C4"] = 1, 2.5
    ws["B6"], ws["C6"] = 2, "bad"
    wb.save(tmp_path / "off.xlsx")
    f = local_file(tmp_path / "off.xlsx")
    assert read_all(f, make_table(format="xlsx"), settings).to_pylist() == [
        {"id": "1", "amount": "2.5"},
        {"id": "2", "amount": "bad"},
    ]
    exc = rejected(f, make_table(format="xlsx", types={"amount": "float64"}), settings)
    assert exc.line == 6


# --- reject_file --------------------------------------------------------------------------------


def test_reject_copies_and_writes_reason_without_touching_the_drop(settings: Settings, tmp_path: Path) -> None:
    path = write(tmp_path / "drop" / "sub" / "bad.csv", "id\n1,2\n")
    f = local_file(path, tmp_path / "drop")
    where = reject_file(
        f, "第 2 行: 字段数 2, 表头 1 (wrong field count)", settings, "air", "hourly", "20240105T020000"
    )
    target = Path(settings.rejected_dir) / "air" / "hourly" / "20240105T020000" / "sub" / "bad.csv"
    assert where == str(target)
    assert target.read_bytes() == path.read_bytes()
    assert path.exists()  # copied, never moved
    reason = json.loads(Path(f"{target}.reason.json").read_text(encoding="utf-8"))
    assert reason["file"] == "sub/bad.csv" and reason["line"] == 2 and reason["batch_id"] == "20240105T020000"
    assert "rejected_at" not in reason
    with pytest.raises(ValueError):
        reject_file(f, "x", settings, "air", "hourly", "../escape")


# --- S3 through moto's server mode over HTTP ----------------------------------------------------


@pytest.fixture
def s3_settings(settings: Settings, moto_endpoint: str, aws_env: None) -> Settings:
    return dataclasses.replace(settings, s3_endpoint=moto_endpoint)


def test_s3_list_read_and_reject(s3_settings: Settings) -> None:
    client = s3_client(s3_settings)
    client.create_bucket(Bucket="drops")
    gbk_csv = CHINESE_CSV.encode("gbk")
    buf = io.BytesIO()
    pq.write_table(pa.table({"id": [1, 2], "at": pa.array([datetime(2024, 1, 5, 10), None], pa.timestamp("us"))}), buf)
    objects = {
        "env/air/2024/hourly_02.csv": gbk_csv,
        "env/air/2024/hourly_01.csv": gbk_csv,
        "env/air/2024/daily.csv": b"id\n1\n",
        "env/air/2024/nested/hourly_03.csv": gbk_csv,
        "env/air/2024/p.parquet": buf.getvalue(),
        "env/other/hourly_09.csv": gbk_csv,
    }
    for key, body in objects.items():
        client.put_object(Bucket="drops", Key=key, Body=body)

    drop = FileDrop(location="s3://drops/env/air/2024", tables=[make_table()])
    table = make_table(glob="hourly_*.csv", encoding="gbk", columns=CHINESE_COLUMNS)
    listed = list_drop_files(drop, table, s3_settings)
    assert [f.name for f in listed] == ["hourly_01.csv", "hourly_02.csv"]
    assert listed[0].uri == "s3://drops/env/air/2024/hourly_01.csv"
    assert listed[0].size == len(gbk_csv) and listed[0].fingerprint
    expect_chinese(read_all(listed[0], table, s3_settings))

    ptable = make_table(format="parquet", glob="*.parquet", types={"at": "timestamp"})
    (pfile,) = list_drop_files(drop, ptable, s3_settings)
    out = read_all(pfile, ptable, s3_settings)
    assert out.schema.field("at").type == SHANGHAI and out.column("id").to_pylist() == [1, 2]

    client.put_object(Bucket="drops", Key="env/air/2024/x.jsonl", Body='{"id": 1, "名称": "张三"}\n'.encode("gbk"))
    jtable = make_table(format="jsonl", glob="*.jsonl", encoding="gbk", columns={"名称": "name"})
    (jfile,) = list_drop_files(drop, jtable, s3_settings)
    assert read_all(jfile, jtable, s3_settings).to_pylist() == [{"id": 1, "name": "张三"}]
    _xlsx(s3_settings.root / "r.xlsx", [["id", "name"], [1, "李四"]], first_sheet=None)
    client.upload_file(str(s3_settings.root / "r.xlsx"), "drops", "env/air/2024/r.xlsx")
    xtable = make_table(format="xlsx", glob="*.xlsx")
    (xfile,) = list_drop_files(drop, xtable, s3_settings)
    assert read_all(xfile, xtable, s3_settings).to_pylist() == [{"id": "1", "name": "李四"}]
    objects.update({"env/air/2024/x.jsonl": b"", "env/air/2024/r.xlsx": b""})

    # S3 file → local rejected folder; the source object stays where it was
    where = reject_file(listed[1], "第 3 行: x", s3_settings, "air", "hourly", "b1")
    assert Path(where).read_bytes() == gbk_csv
    assert json.loads(Path(where + ".reason.json").read_text(encoding="utf-8"))["line"] == 3
    assert client.get_object(Bucket="drops", Key="env/air/2024/hourly_02.csv")["Body"].read() == gbk_csv
    assert len(client.list_objects_v2(Bucket="drops")["Contents"]) == len(objects)


def test_s3_rejected_dir_and_bad_file_on_s3(s3_settings: Settings, tmp_path: Path) -> None:
    client = s3_client(s3_settings)
    client.create_bucket(Bucket="drops2")
    client.create_bucket(Bucket="lake")
    client.put_object(Bucket="drops2", Key="in/bad.csv", Body=b"id,name\n1,a\n2,\xff\n")
    settings = dataclasses.replace(s3_settings, rejected_dir="s3://lake/rejected")
    (f,) = list_drop_files(FileDrop(location="s3://drops2/in/", tables=[make_table()]), make_table(), settings)
    exc = rejected(f, make_table(), settings)
    assert exc.line == 3
    where = reject_file(f, exc.reason, settings, "air", "hourly", "b2", line=exc.line)
    assert where == "s3://lake/rejected/air/hourly/b2/bad.csv"
    assert client.get_object(Bucket="lake", Key="rejected/air/hourly/b2/bad.csv")["Body"].read().endswith(b"\xff\n")
    reason = json.loads(
        client.get_object(Bucket="lake", Key="rejected/air/hourly/b2/bad.csv.reason.json")["Body"].read()
    )
    assert reason["line"] == 3 and reason["file"] == "bad.csv"
    assert client.head_object(Bucket="drops2", Key="in/bad.csv")  # still there

    # a local file into the S3 rejected area
    local = write(tmp_path / "loc.csv", "id\n1\n")
    assert (
        reject_file(local_file(local), "r", settings, "air", "hourly", "b3")
        == "s3://lake/rejected/air/hourly/b3/loc.csv"
    )
    assert local.exists()
    assert "testing" not in exc.reason


def test_csv_module_roundtrip_of_exotic_values(settings: Settings, tmp_path: Path) -> None:
    values = [["1", 'say "hi"', "a\r\nb", "  "], ["2", "", "null", "NA"]]
    buf = io.StringIO()
    csv.writer(buf).writerows([["id", "a", "b", "c"], *values])
    path = write(tmp_path / "x.csv", buf.getvalue())
    out = read_all(local_file(path), make_table(), settings)
    assert out.to_pylist() == [
        {"id": "1", "a": 'say "hi"', "b": "a\r\nb", "c": "  "},
        {"id": "2", "a": None, "b": "null", "c": "NA"},
    ]
