"""Privacy (issue 8, item 7): personal values are masked by what they are, not only by declaration, and
masking fails closed. Detectors are measured for precision as well as recall."""

from __future__ import annotations

import json
import random
import re
import shutil
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest
from faker import Faker
from stdnum import luhn
from stdnum.cn import ric
from typer.testing import CliRunner

from pipelines.privacy import column_kind, detect_kinds, is_bank_card, is_resident_id, mask_text, quote
from pipelines.settings import PROJECT_ROOT, Settings, load_settings

RNG = random.Random(20261130)
REGIONS = ["340104", "340111", "110105", "440305", "510107", "620102", "650102", "310115"]


def _resident_id(rng: random.Random = RNG) -> str:
    born = date(1940, 1, 1) + timedelta(days=rng.randrange(365 * 70))
    body = f"{rng.choice(REGIONS)}{born:%Y%m%d}{rng.randrange(1000):03d}"
    return body + ric.calc_check_digit(body + "X")  # stdnum drops the last character it is given


def _card(prefix: str, length: int, rng: random.Random = RNG) -> str:
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    return body + luhn.calc_check_digit(body)


def test_resident_ids_by_check_digit_not_by_shape() -> None:
    valid = [_resident_id() for _ in range(5000)]
    assert detect_kinds(pa.array(valid), ["resident_id"])["resident_id"].all()
    assert all(is_resident_id(v) for v in valid[:200])  # the scalar path is stdnum's own check character
    wrong = []
    for v in valid:
        other = RNG.choice([c for c in "0123456789X" if c != v[-1]])
        wrong.append(v[:-1] + other)
    assert not detect_kinds(pa.array(wrong), ["resident_id"])["resident_id"].any()
    # random 18-digit strings: only those whose check digit happens to be right AND that read as a
    # province and a birth date are flagged; stdnum agrees on each one's check character
    noise = ["".join(RNG.choice("0123456789") for _ in range(18)) for _ in range(20_000)]
    flagged = detect_kinds(pa.array(noise), ["resident_id"])["resident_id"]
    assert flagged.sum() < 20_000 * 0.002, flagged.sum()
    assert all(ric.calc_check_digit(n) == n[-1] for n, f in zip(noise, flagged, strict=True) if f)
    # old 15-digit IDs: province + YYMMDD
    assert detect_kinds(pa.array(["340104900101123", "990104900101123", "340104901301123"]))["resident_id"].tolist() == \
        [True, False, False]
    # a column is personal when most of its values are
    assert column_kind(pa.array(valid[:90] + wrong[:10])) == "resident_id"
    assert column_kind(pa.array(noise[:100])) is None


def test_bank_cards_need_a_known_issuer_prefix_and_luhn() -> None:
    real = ["4111111111111111", "5555555555554444", "2223003122003222", "6212345678901232"[:-1] + "0",
            _card("622848", 19), _card("621700", 19), _card("9558", 19), _card("4367", 16), _card("5186", 16),
            _card("62", 16), _card("601428", 19)]
    real = [r for r in real if luhn.is_valid(r)]
    assert len(real) >= 10
    assert detect_kinds(pa.array(real), ["bank_card"])["bank_card"].all()
    assert all(is_bank_card(r) for r in real)
    spaced = " ".join(real[0][i:i + 4] for i in range(0, 16, 4))
    assert detect_kinds(pa.array([spaced]), ["bank_card"])["bank_card"].all()  # spaces are ignored
    # Luhn alone passes one random number in ten; no issuer starts with 0, 1, 7 or 3 but 35/36/38
    no_issuer = [_card(RNG.choice("017") + "".join(RNG.choice("0123456789") for _ in range(5)), RNG.choice(
        [16, 17, 18, 19])) for _ in range(5000)]
    assert all(luhn.is_valid(n) for n in no_issuer)
    assert not detect_kinds(pa.array(no_issuer), ["bank_card"])["bank_card"].any()
    random16 = ["".join(RNG.choice("0123456789") for _ in range(16)) for _ in range(10_000)]
    luhn_share = sum(luhn.is_valid(n) for n in random16) / len(random16)
    card_share = detect_kinds(pa.array(random16), ["bank_card"])["bank_card"].mean()
    assert 0.08 < luhn_share < 0.12 and card_share < luhn_share / 2
    wrong_luhn = [r[:-1] + str((int(r[-1]) + 1) % 10) for r in real]
    assert not detect_kinds(pa.array(wrong_luhn), ["bank_card"])["bank_card"].any()


def test_mobiles_names_and_addresses() -> None:
    found = detect_kinds(pa.array(["13812345678", "+86 138 1234 5678", "0086-13912345678", "12812345678", "1381234567",
                             "138123456789"]), ["mobile"])["mobile"]
    assert found.tolist() == [True, True, True, False, False, False]
    fake = Faker("zh_CN")
    fake.seed_instance(7)
    names = [fake.name() for _ in range(2000)]
    assert detect_kinds(pa.array(names), ["person_name"])["person_name"].mean() > 0.97
    not_names = ["蜀山区", "包河区", "庐江县", "巢湖市", "合肥公交集团", "餐饮", "学校", "长江中路", "合肥ABC科技有限公司",
                 "有限责任公司", "正常", "注销", "吊销"]
    assert not detect_kinds(pa.array(not_names), ["person_name"])["person_name"].any()
    addresses = [f"安徽省合肥市蜀山区{fake.street_address()}" for _ in range(500)]
    assert detect_kinds(pa.array(addresses), ["address"])["address"].mean() > 0.97
    assert not detect_kinds(pa.array(not_names), ["address"])["address"].any()


def test_mask_text_masks_identifiers_a_message_quotes() -> None:
    text = ("第 3 行: 身份证号 34010419900101123Y 校验位错误; 手机 +86 138 1234 5678; 卡号 6228480402564890018; "
            "key 340102197003210109|410; uscc 91340100MA2N00000X")
    masked = mask_text(text)
    assert masked is not None
    assert "34010419900101123Y" not in masked and "340104********123Y" in masked
    assert "1234 5678" not in masked and "138****5678" in masked
    assert "6228480402564890018" not in masked and "622848*********0018" in masked
    assert "340102********0109|410" in masked and "91340100MA2N00000X" in masked
    assert quote("张三丰") == "'张**' (3 chars)" and quote("2023-13-45") == "'2023-13-45'" and quote(None) == "None"


def test_messages_that_quote_values_are_masked() -> None:
    """A type error at extract and a raising validator quote the offending value: masked (it reaches XCom
    and task logs)."""
    from pipelines.errors import SourceError
    from pipelines.extract.sql import _coerce
    from pipelines.quality.rules import Rule, evaluate

    with pytest.raises(SourceError) as exc:
        _coerce(("13812345678",), pa.field("phone", pa.int32()), "system s, table t")
    assert "13812345678" not in str(exc.value) and "138****5678" in str(exc.value)

    def boom(t: pa.Table) -> pa.Array:
        raise ValueError(f"cannot parse {t.column('id')[0].as_py()!r} of {t.column('name')[0].as_py()!r}")

    rule = Rule("d.id.x", "d", "id", "resident_id", "规范性", "critical", "t", "x", boom)
    (result,) = evaluate(pa.table({"id": ["340104199001011234"], "name": ["张伟"]}), [rule])
    assert result.error is not None and "340104199001011234" not in result.error and "340104********1234" in result.error
    assert "张伟" not in result.error and "'张*'" in result.error

    from pipelines.extract.sql import SqlSource

    driver = ValueError('invalid input syntax for type bigint: "王秀英"; Key (id)=(340104199001011234) already exists; '
                        'column "姓名" of relation "人口"')
    message = str(SqlSource("s", "sqlite://")._fail(None, driver))
    assert "王秀英" not in message and "340104199001011234" not in message
    assert '"姓名"' in message and '"人口"' in message  # what the reader needs to fix the load stays


def test_gate_masker_masks_a_misdeclared_column_by_its_values() -> None:
    from pipelines.quality.gate import _Masker
    from pipelines.standards import DataElement

    public = DataElement(id="DE9999", code="record_holder", name_zh="x", name_en="x", definition="x", type="string",
                         sensitivity="公开")
    contract = SimpleNamespace(columns=[SimpleNamespace(name="holder", element="record_holder")], primary_key=["holder"])
    masker = _Masker(contract, SimpleNamespace(element=lambda code: public))  # type: ignore[arg-type]
    ids = [_resident_id() for _ in range(5)]
    shown = masker.column(pa.table({"holder": ids}), "holder")
    assert all(s.endswith(i[-4:]) and "********" in s for s, i in zip(shown, ids, strict=True))


# --- lake show: by detection, fail closed, conflicts --------------------------------------------------

PEOPLE_IDS = [_resident_id(random.Random(i)) for i in range(6)]
PEOPLE = {"sfzh": PEOPLE_IDS, "xm": ["张伟", "王秀英", "李娜", "刘洋", "陈静", "杨磊"],
          "sjhm": ["13812345678", "13912345679", "15012345670", "18612345671", "17712345672", "13312345673"],
          "zz": [f"安徽省合肥市蜀山区长江西路{i}号" for i in range(1, 7)],
          "zt": ["1", "1", "2", "1", "2", "1"], "dm": ["340104"] * 6}


def _table(settings: Settings, name: str, data: dict[str, list[str]]) -> None:
    from pipelines.lake.catalog import get_catalog

    table = pa.table(data)
    get_catalog(settings).create_table(name, schema=table.schema).append(table)


def _show(*args: str) -> tuple[str, str]:
    from pipelines.cli import app

    result = CliRunner().invoke(app, ["lake", "show", *args])
    assert result.exit_code == 0, result.output
    return result.stdout, result.stderr


@pytest.fixture
def project_config(lake_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("CITYLAKE_REGISTRY_DIR", str(PROJECT_ROOT / "schemas" / "sources"))
    return load_settings()


def _clear_values(shown: str) -> list[str]:
    return [v for col in ("sfzh", "xm", "sjhm", "zz") for v in PEOPLE[col] if v in shown]


def test_lake_show_masks_an_undeclared_systems_ids_names_and_mobiles(project_config: Settings) -> None:
    detail = [json.dumps({"姓名": n, "手机": m}, ensure_ascii=False) for n, m in zip(PEOPLE["xm"], PEOPLE["sjhm"],
                                                                                     strict=True)]
    _table(project_config, "raw.newsys__people", {**PEOPLE, "detail": detail})
    shown, warned = _show("raw.newsys__people")
    assert _clear_values(shown) == [] and not warned
    assert '{"姓名": "张*", "手机": "138****5678"}' in shown  # inside JSON text too
    assert "340104" in shown and "张*" in shown and "138****5678" in shown and "安徽省合肥市蜀山区***" in shown
    assert re.search(r"│ 1\s+│ 340104", shown)  # codes stay readable
    clear, _ = _show("raw.newsys__people", "--unmasked")
    assert len(_clear_values(clear)) == 24


def test_lake_show_masks_declared_elements_detection_would_miss(project_config: Settings) -> None:
    """Declaration still counts: a birth date generalised to the year, a name that does not look like one."""
    _table(project_config, "raw.population__person", {
        "resident_id": PEOPLE_IDS[:2], "name": ["Alice Wang", "欧阳某某某某"], "birth_date": ["1990-05-17", "1985-11-02"],
        "sex": ["2", "1"], "district_code": ["340104", "340111"]})
    shown, warned = _show("raw.population__person")
    assert not warned
    for v in [*PEOPLE_IDS[:2], "Alice Wang", "欧阳某某某某", "1990-05-17", "1985-11-02"]:
        assert v not in shown, v
    assert "1990-**-**" in shown and "A*********" in shown and re.search(r"│ 2\s+│ 340104", shown)


def test_lake_show_fails_closed_when_the_config_cannot_be_read(lake_settings: Settings, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "root"
    shutil.copytree(PROJECT_ROOT / "schemas", root / "schemas")
    (root / "schemas" / "standards" / "elements.yml").write_text("elements: [\n  - {code: broken\n", encoding="utf-8")
    monkeypatch.setenv("CITYLAKE_ROOT", str(root))
    monkeypatch.setenv("CITYLAKE_REGISTRY_DIR", str(root / "schemas" / "sources"))
    settings = load_settings()
    # a declared table, with columns detection alone would not catch: free text that is no name
    data = {**PEOPLE, "remark": ["住户反映噪音"] * 6}
    _table(settings, "raw.population__person", data)
    shown, warned = _show("raw.population__person")
    assert "config unreadable" in warned and "masked" in warned
    assert _clear_values(shown) == [] and "住户反映噪音" not in shown
    assert re.search(r"│ 1\s+│ 340104", shown)  # codes stay readable
    clear, _ = _show("raw.population__person", "--unmasked")
    assert len(_clear_values(clear)) == 24 and "住户反映噪音" in clear


def test_conflicts_keep_clear_keys_but_render_masked_unless_unmasked(project_config: Settings) -> None:
    ids = PEOPLE_IDS[:3]
    conflicts = {"run_id": ["r1"] * 3, "element": ["person_name", "mobile_phone", "residence_address"],
                 "key": [ids[0], f"{ids[1]}|410", ids[2]], "authoritative_value": ["张伟", "13812345678", PEOPLE["zz"][0]],
                 "other_value": ["张玮", "13812345679", PEOPLE["zz"][1]]}
    _table(project_config, "meta.conflicts", conflicts)
    shown, _ = _show("meta.conflicts")
    for v in [*ids, "张伟", "张玮", "13812345678", "13812345679", *PEOPLE["zz"][:2]]:
        assert v not in shown, v
    assert "张*" in shown and "138****5678" in shown and ids[0][:6] + "********" in shown
    clear, _ = _show("meta.conflicts", "--unmasked")
    assert all(v in clear for v in [*ids, "张伟", "张玮", "13812345679"])


def test_conflict_keys_are_masked_part_by_part_by_the_copys_primary_key() -> None:
    """A copy whose primary key holds a name and an address: each part of the ``|``-joined key is masked by
    its declared element, not only where a pattern sees an ID (the report's conflicts page shows keys)."""
    from pipelines.privacy.policy import Declarations, conflict_key, masked_rows
    from pipelines.standards import load_standards

    standards = load_standards(PROJECT_ROOT / "schemas" / "standards")
    copy = SimpleNamespace(source={"system": "community", "table": "household"},
                           primary_key=["person_name", "address", "mobile", "seq"],
                           columns=[SimpleNamespace(name="person_name", element="person_name"),
                                    SimpleNamespace(name="address", element="residence_address"),
                                    SimpleNamespace(name="mobile", element="mobile_phone"),
                                    SimpleNamespace(name="seq", element="poi_id")])
    single = SimpleNamespace(source={"system": "community", "table": "member"}, primary_key=["member"],
                             columns=[SimpleNamespace(name="member", element="person_name")])
    decl = Declarations(standards, {"household": copy, "member": single})  # type: ignore[dict-item]
    name, address, mobile = "欧阳娜娜", PEOPLE["zz"][0], PEOPLE["sjhm"][0]
    row = {"run_id": "r1", "element": "person_name", "other_system": "community", "other_table": "household",
           "key": f"{name}|{address}|{mobile}|H-0042", "authoritative_value": name, "other_value": "欧阳娜"}
    key = conflict_key(row, decl)
    assert key == "欧***|安徽省合肥市蜀山区***|138****5678|H-0042", key  # by element; a code part stays readable
    shown = masked_rows("meta.conflicts", pa.Table.from_pylist([row]), decl)[0]
    assert shown["key"] == key and name not in json.dumps(shown, ensure_ascii=False)
    # a single-column key is one part even when it holds the separator
    assert conflict_key({**row, "other_table": "member", "key": "张三丰|户主"}, decl) == "张*****"
    # no contract for the copy, or a key that does not split into its primary key: undeclared, fail closed
    for other in ({"other_table": "gone"}, {"key": f"{name}|{address}"}):
        masked = conflict_key({**row, **other}, decl)
        assert masked is not None and name not in masked and "长江西路" not in masked, masked
    assert conflict_key({**row, "other_table": "gone", "key": f"{PEOPLE_IDS[0]}|410"}, decl) == (
        PEOPLE_IDS[0][:6] + "********" + PEOPLE_IDS[0][-4:] + "|410")  # an ID keeps its masked shape, a code stays
    assert conflict_key({**row, "key": None}, decl) is None
    assert name not in str(conflict_key(row, None))  # config unreadable: still masked


# --- review fixes: quote's free text, every known card in messages, nested and closed lake show, one home ---

FREE_TEXT = ["张三丰(户主)", "王小明同学", "欧阳某某某某", "Alice Wang", "Alice"]


def test_quote_shows_free_text_only_by_its_shape() -> None:
    for value in FREE_TEXT:
        shown = quote(value)
        assert value not in shown and value[1:3] not in shown, shown
        assert shown == f"'{value[0]}**' ({len(value)} chars)"
    # what the reader needs to see what went wrong stays: numbers, dates, missing-value words, masked IDs
    assert [quote(v) for v in ["12.5", "2024-01-05 02:00:00", "n/a", 7, "34010419900101123X", "13812345678"]] == [
        "'12.5'", "'2024-01-05 02:00:00'", "'n/a'", "'7'", "'340104********123X'", "'138****5678'"]


def test_drop_rejection_reasons_quote_cells_through_privacy_quote(lake_settings: Settings, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.errors import FileRejected
    from pipelines.extract.drops import DropFile, opening, read_drop_file, reject
    from pipelines.registry import DropTable

    assert not hasattr(reject, "_show")  # one way to quote a cell: privacy.quote

    def reason(name: str, text: str, **kw: object) -> str:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        table = DropTable(code="t", primary_key=["id"], glob=f"*{path.suffix}", **kw)  # type: ignore[arg-type]
        with pytest.raises(FileRejected) as info:
            list(read_drop_file(DropFile(str(path), name, path.stat().st_size, "v"), table, lake_settings))
        return info.value.reason

    for i, value in enumerate(FREE_TEXT):  # a name typed into an amount column (typing.py)
        why = reason(f"a{i}.csv", f"id,amount\n1,1.00\n2,{value}\n", format="csv", types={"amount": "decimal(12,2)"})
        assert "第 3 行" in why and value not in why and f"'{value[0]}**' ({len(value)} chars)" in why, why
    monkeypatch.setattr(opening, "BLOCK_BYTES", 64)  # the odd value shows up after the first block (jsonl.py)
    rows = "".join(f'{{"id": {i}, "n": {i}}}\n' for i in range(20))
    why = reason("late.jsonl", rows + '{"id": 20, "n": "Alice Wang"}\n', format="jsonl")
    assert "第 21 行" in why and "Alice Wang" not in why and "'A**' (10 chars)" in why, why


def test_messages_mask_every_card_the_detector_knows() -> None:
    from pipelines.privacy.detect import CARD_PREFIXES

    cards = ["6011000990139424", _card("95599", 19), _card("601428", 19), _card("4", 19), _card("9558", 19)]
    assert detect_kinds(pa.array(cards), ["bank_card"])["bank_card"].all()
    for low, high, _ in CARD_PREFIXES:  # every prefix of the one table, every card length
        for prefix in {low, high}:
            cards += [_card(prefix, n) for n in range(16, 20)]
    for card in cards:
        masked = mask_text(f"第 2 行: 卡号 {card} 不能转换")
        assert masked is not None and card not in masked and f"{card[:6]}{'*' * (len(card) - 10)}{card[-4:]}" in masked
        assert card not in quote(card)
    assert mask_text("订单 1234567890123456 已付") == "订单 1234567890123456 已付"  # no issuer: not a card


def _element(code: str, sensitivity: str, **kw: object) -> object:
    from pipelines.standards import DataElement

    return DataElement(id="DE9998", code=code, name_zh="x", name_en="x", definition="x", type="string",
                       sensitivity=sensitivity, **kw)  # type: ignore[arg-type]


def test_a_declared_non_personal_text_column_still_has_identifiers_masked() -> None:
    from pipelines.privacy import column_masks
    from pipelines.quality.gate import _Masker

    remark, code = _element("remark", "公开"), _element("status", "公开", code_list="status")
    data = pa.table({"remark": ["联系人电话 13812345678, 身份证 " + PEOPLE_IDS[0], "正常"], "status": ["1", "2"]})
    masks = column_masks(data, {"remark": remark, "status": code})  # type: ignore[dict-item]
    assert set(masks) == {"remark"}  # code-list values stay clear
    shown = masks["remark"](data.column("remark")[0].as_py())
    assert "13812345678" not in shown and PEOPLE_IDS[0] not in shown and "138****5678" in shown
    # the gate masks failing rows by the same policy
    contract = SimpleNamespace(columns=[SimpleNamespace(name="remark", element="remark"),
                                        SimpleNamespace(name="status", element="status")], primary_key=["status"])
    elements = {"remark": remark, "status": code}
    masker = _Masker(contract, SimpleNamespace(element=elements.__getitem__))  # type: ignore[arg-type]
    assert masker.column(data, "remark")[0] == shown and masker.column(data, "status") == ["1", "2"]


def test_lake_show_masks_structs_and_lists_and_fails_closed_on_dates(lake_settings: Settings, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    data = pa.table({
        "id": ["a1", "a2"],
        "person": [{"name": "张三", "sfzh": PEOPLE_IDS[0], "phones": ["13812345678"]},
                   {"name": "李四", "sfzh": PEOPLE_IDS[1], "phones": ["13912345679", "15012345670"]}],
        "born": pa.array([date(1990, 5, 17), date(1985, 11, 2)]), "born_text": ["1990-05-17", "1985-11-02"],
        "tags": [["住户反映噪音"], None]})
    clear = [PEOPLE_IDS[0], PEOPLE_IDS[1], "13812345678", "13912345679", "15012345670", "'张三'", "'李四'"]
    monkeypatch.setenv("CITYLAKE_REGISTRY_DIR", str(PROJECT_ROOT / "schemas" / "sources"))
    _table(load_settings(), "raw.newsys__nested", data.drop_columns(["born", "born_text", "tags"]))
    shown, warned = _show("raw.newsys__nested")
    assert not warned and [v for v in clear if v in shown] == [] and "138****5678" in shown and "张*" in shown
    assert PEOPLE_IDS[1][:6] + "********" + PEOPLE_IDS[1][-4:] in shown
    # failing closed: the same nested values, dates kept to the year, free text inside a list hidden
    root = tmp_path / "root"
    shutil.copytree(PROJECT_ROOT / "schemas", root / "schemas")
    (root / "schemas" / "standards" / "elements.yml").write_text("elements: [\n", encoding="utf-8")
    monkeypatch.setenv("CITYLAKE_ROOT", str(root))
    monkeypatch.setenv("CITYLAKE_REGISTRY_DIR", str(root / "schemas" / "sources"))
    _table(load_settings(), "raw.population__nested", data)
    shown, warned = _show("raw.population__nested")
    assert "config unreadable" in warned
    for v in [*clear, "1990-05-17", "1985-11-02", "05-17", "11-02", "住户反映噪音"]:
        assert v not in shown, v
    assert "1990-**-**" in shown and "a1" in shown and PEOPLE_IDS[0][:6] + "********" in shown and "住*" in shown


def test_resident_id_check_arithmetic_has_one_home() -> None:
    """privacy (detection) and quality (validation) share one check-character computation, one floor
    below both, so neither imports the other (a module imports downward)."""
    from pipelines.identifiers import ric_check_characters
    from pipelines.quality.validators import resident_id_check_digit

    homes = [p.relative_to(PROJECT_ROOT).as_posix() for p in (PROJECT_ROOT / "pipelines").rglob("*.py")
             if "10X98765432" in p.read_text(encoding="utf-8")]
    assert homes == ["pipelines/identifiers.py"]
    ids = [_resident_id(random.Random(i)) for i in range(200)]
    body = pa.array(ids).to_numpy(zero_copy_only=False).astype("S18").view("u1").reshape(-1, 18)[:, :17] - 48
    assert bytes(ric_check_characters(body)).decode() == "".join(i[-1] for i in ids)
    assert resident_id_check_digit(pa.array(ids)).to_pylist() == [True] * 200
    assert detect_kinds(pa.array(ids), ["resident_id"])["resident_id"].all()


def test_raw_lineage_file_names_are_masked_as_file_names() -> None:
    """``_source_file`` holds drop file names, which people name after the person: ``lake show`` masks the
    personal name, the address and the ID in it (free-text detection left the name in clear)."""
    from pipelines.privacy import masked_rows

    name = "ridership_张伟_合肥市蜀山区长江西路100号_340104199001011234.jsonl"
    data = pa.table({"line_id": ["1路"], "_source_file": [name]})
    (row,) = masked_rows("raw.bus_ridership__ridership", data, None)
    assert row["_source_file"] == "ridership_张*_合肥市蜀山区***_340104********1234.jsonl"


# --- identifiers inside free text (the open release's leak gate) -------------------------------------------


def _card_19(rng: random.Random) -> str:
    return _card("6222", 19, rng)


def test_identifiers_in_text_finds_glued_and_split_numbers() -> None:
    """Each digit run on its own, plausible joins of groups written apart (any whitespace, dash, dot, slash,
    up to two), windows inside a glued run; full-width digits; Chinese-numeral house numbers."""
    from pipelines.privacy.detect import identifiers_in_text

    rng = random.Random(11)
    rid, card, mobile = _resident_id(rng), _card_19(rng), "13812345678"
    uscc_body = "92340100MA2N1234X"
    from stdnum.cn import uscc

    code = uscc_body + uscc.calc_check_digit(uscc_body)
    spaced_card = " ".join(card[i:i + 4] for i in range(0, 19, 4))
    cases = {
        f"2024-05-01 {rid}": ("resident_id", rid),
        f"张三 {rid} {mobile}": ("resident_id", rid),
        f"第3 {rid}": ("resident_id", rid),
        f"2024 {mobile}": ("mobile", mobile),
        f"2024-05-01 {spaced_card}": ("bank_card", card),
        f"交易日期2024-05-01卡号{spaced_card}": ("bank_card", card),
        f"20240501{rid}": ("resident_id", rid),  # glued to a date
        f"3{rid}号": ("resident_id", rid),  # glued to an ordinal
        f"202405011230{mobile}": ("mobile", mobile),
        f"{rid[:6]} {rid[6:14]} {rid[14:]}": ("resident_id", rid),
        "电话138.1234.5678": ("mobile", mobile),
        "电话138—1234—5678": ("mobile", mobile),
        "电话138\u00a01234\u00a05678": ("mobile", mobile),
        "电话138\u30001234\u30005678": ("mobile", mobile),
        "电话138  1234  5678": ("mobile", mobile),
        "电话１３８１２３４５６７８": ("mobile", mobile),
        "电话1 3 8 1 2 3 4 5 6 7 8": ("mobile", mobile),
        f"个体户{code[:8]} {code[8:]}": ("individual_uscc", code),
        f"执照 {code[:4]} {code[4:8]} {code[8:12]} {code[12:]}": ("individual_uscc", code),
        "住长江西路八十八号": ("address", "住长江西路八十八号"),
        "琥珀山庄三栋二单元": ("address", "琥珀山庄三栋二单元"),
    }
    values = list(cases)
    found = {(values[row], kind, text) for row, kind, text in identifiers_in_text(pa.array(values))}
    for value, (kind, text) in cases.items():
        assert (value, kind, text) in found, (value, kind)
    assert ("张三 " + rid + " " + mobile, "mobile", mobile) in found
    clean = ["2024-05-01 营业", "订单 2024-05-01 12:30 共 38 元", "长江西路", "地铁一号线", "五月一号开业", "117.283456,31.861234",
             "1714521600000", "版本 1.2.3.4.5.6"]
    assert identifiers_in_text(pa.array(clean)) == []


def test_identifiers_in_text_precision_on_random_digits() -> None:
    """Random numbers stay rare hits: a random 11–19-digit number is a mobile or card by shape about one time
    in a hundred (as before this scan split text); joins and windows add little (measured: 200 k texts of
    three random 1–30-digit numbers 2.7 % of texts hit, of which joins 0.6 and windows 0.1 points)."""
    from pipelines.privacy.detect import identifiers_in_text

    rng = random.Random(5)
    texts = [" ".join(str(rng.randrange(10 ** (n - 1), 10 ** n)) for n in rng.choices(range(1, 31), k=3))
             for _ in range(20_000)]
    share = len({row for row, _k, _t in identifiers_in_text(pa.array(texts))}) / len(texts)
    assert share < 0.035
    order_numbers = [f"订单号{rng.randrange(10 ** 19, 10 ** 20)}" for _ in range(20_000)]  # 20 digits, no date
    assert len(identifiers_in_text(pa.array(order_numbers))) / len(order_numbers) < 0.001


def test_deid_mask_and_district_outputs() -> None:
    """deid ``mask``: the element's display mask, each distinct value once (nulls stay null); deid
    ``district``: the GB/T 2260 county-level division an address names, null when it names none."""
    from pipelines.privacy.deid import ColumnRule, Deidentifier, county_names
    from pipelines.standards import load_standards

    standards = load_standards(PROJECT_ROOT / "schemas" / "standards")
    deid = Deidentifier([ColumnRule("name", "mask", standards.element("person_name")),
                         ColumnRule("address", "district"),
                         ColumnRule("mobile", "mask", standards.element("mobile_phone"))],
                        counties=county_names(standards.code_list("division")))
    batch = pa.record_batch({
        "name": ["张三", "欧阳娜娜", None, "张三"],
        "address": ["合肥市蜀山区长江西路88号", "安徽省合肥市包河区徽州大道1号", "长江西路88号", None],
        "mobile": ["13812345678", None, "13812345678", "13900001111"]})
    out = deid.apply(batch)
    assert out.column("name").to_pylist() == ["张*", "欧***", None, "张*"]
    assert out.column("address").to_pylist() == ["蜀山区", "包河区", None, None]
    assert out.column("mobile").to_pylist() == ["138****5678", None, "138****5678", "139****1111"]
    assert out.schema.names == ["name", "address", "mobile"]


def test_jsonl_line_hits_are_attributed_to_their_columns(tmp_path: Path) -> None:
    """A decimal's digits read across its point look like a card at line level (22389093.3300000000 as DuckDB's
    JSON writes it → 223890933300000000, issuer prefix and Luhn): no column holds it, so no hit; an ID inside a
    text field and a mobile stored as an integer are attributed to their columns."""
    import pyarrow as pa
    from stdnum.cn import ric

    from pipelines.privacy import detect
    from pipelines.publish.leak import ScanColumn, scan_file

    rid = "11010119900307457" + ric.calc_check_digit("110101199003074570")
    rows = [{"name": f"企业{i}", "capital": "@", "count": 0} for i in range(200)]
    rows[7]["name"] = f"负责人{rid}"
    rows[9]["count"] = 13812345678
    lines = [json.dumps(r, ensure_ascii=False, separators=(",", ":")).replace('"@"', "22389093.3300000000")
             for r in rows]
    assert any(kind == detect.BANK_CARD for _i, kind, _t in detect.identifiers_in_text(pa.array(lines)))
    path = tmp_path / "x.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    columns = [ScanColumn("name", pa.string()), ScanColumn("capital", pa.decimal128(20, 10)),
               ScanColumn("count", pa.int64())]
    found = scan_file(path, "jsonl", columns)
    assert found.rows == 200
    assert sorted((h.column, h.row, h.kind) for h in found.hits) == [("count", 10, "mobile"),
                                                                      ("name", 8, "resident_id")]


def test_vectorised_column_mask_is_the_per_value_mask_for_every_element() -> None:
    """mask_values masks text columns in DuckDB (no Python call per value): for every data element it must
    give exactly what ``mask`` gives value by value, supplementary characters and edge lengths included."""
    from pipelines.config import load_all
    from pipelines.privacy.deid import mask_values
    from pipelines.privacy.mask import mask, mask_sql

    fake = Faker("zh_CN")
    fake.seed_instance(3)
    samples = ["", "张", "欧阳娜娜", "𠮷野家", "😀ab", "区", "蜀山区", "a区b县c", "xx县yy区", "合肥市高新区", "  空格 ", None,
               _resident_id(), _resident_id()[:16], "13812345678", "+8613812345678", "2026-11-30",
               *(fake.name() for _ in range(20)), *(fake.address() for _ in range(20)),
               *(fake.phone_number() for _ in range(10))]
    elements = load_all(load_settings()).standards.elements
    vectorised = [e for e in elements.values() if mask_sql(e, "v") not in (None, "v")]
    assert {"resident_id", "person_name", "mobile_phone", "residence_address"} <= {e.code for e in vectorised}
    for element in elements.values():
        got = mask_values(pa.array(samples, pa.string()), element).to_pylist()
        assert got == [mask(v, element) for v in samples], element.code
    dates = pa.array([date(1952, 3, 1), None, date(2026, 11, 30), date(999, 1, 2)], pa.date32())
    for element in elements.values():
        assert mask_values(dates, element).to_pylist() == [mask(v, element) for v in dates.to_pylist()], element.code


def _masks_in_forked_child() -> None:
    import gc

    from pipelines.privacy.duck import column_sql

    gc.collect()  # whatever the parent left to the collector goes now, in the child
    assert column_sql(pa.array(["ab"]), "upper(v)").to_pylist() == ["AB"]


def test_a_fork_after_masking_leaves_the_child_working() -> None:
    """A Celery or multiprocessing worker forked from a process that already masked (this thread holds a
    DuckDB connection): the child opens its own and never destroys the inherited one, whose destructor
    crashes outside the parent (SIGSEGV, seen after `citylake sql`)."""
    import multiprocessing

    from pipelines.privacy.duck import column_sql

    assert column_sql(pa.array(["x"]), "upper(v)").to_pylist() == ["X"]
    child = multiprocessing.get_context("fork").Process(target=_masks_in_forked_child)
    child.start()
    child.join(60)
    assert child.exitcode == 0
