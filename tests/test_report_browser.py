"""The governance site in a real browser: headless Chromium (Debian's, driven by Playwright) opens every page
from the file system with no network; no console error, no failed or external request, charts drawn, catalog
search and filters hide rows, and Chinese text drawn with a CJK font (the platform font Chromium used,
read over CDP; without a CJK font it is a Latin font drawing empty boxes)."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from conftest import require_binary, require_cjk_font
from playwright.sync_api import Browser, BrowserContext, Page, Route, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from pipelines.settings import PROJECT_ROOT, Settings

ARTIFACTS = PROJECT_ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# Families that hold Chinese glyphs; a Latin family named for Han characters means they were drawn as boxes.
CJK_FAMILY = re.compile(r"CJK|Source Han|WenQuanYi|Droid Sans Fallback|YaHei|PingFang|Sim(Sun|Hei)|AR PL|"
                        r"Noto (Sans|Serif) (SC|TC|HK|JP|KR)\b", re.IGNORECASE)
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")


# ---------------------------------------------------------------- browser plumbing

@dataclass
class Visit:
    """One page opened with its problems recorded: console errors, uncaught exceptions, failed requests
    and requests for anything not on the file system (a CDN reference fails, the bureau has no internet)."""

    page: Page
    url: str
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        return self.errors + self.requests


def launch(playwright: Any, **kwargs: Any) -> Browser:
    """Debian's Chromium, never a downloaded build (the machines reach no browser CDN)."""
    return playwright.chromium.launch(executable_path=require_binary("chromium"), args=CHROMIUM_ARGS, **kwargs)


class Tab:
    """One browser tab that records, per page opened in it, what `Visit` lists (a new tab per page costs
    three times the load; the recorder is reset at each navigation)."""

    def __init__(self, context: BrowserContext) -> None:
        self.page = context.new_page()
        self.seen = Visit(self.page, "")
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.seen.errors.append(f"uncaught: {exc}"))
        self.page.on("requestfailed", lambda r: self.seen.requests.append(f"request failed: {r.url} ({r.failure})"))
        self.page.route("**/*", self._route)

    def _console(self, message: Any) -> None:
        if message.type == "error":
            where = message.location or {}
            self.seen.errors.append(f"console error: {message.text} ({where.get('url', '')}:{where.get('lineNumber', '')})")

    def _route(self, route: Route) -> None:
        if route.request.url.startswith(LOCAL_SCHEMES):
            route.continue_()
        else:
            self.seen.requests.append(f"external request blocked: {route.request.url}")
            route.abort("blockedbyclient")

    def open(self, url: str, settle_ms: int = 300) -> Visit:
        self.seen = Visit(self.page, url)
        self.page.goto(url, wait_until="load")
        self.page.wait_for_timeout(settle_ms)  # late script errors and lazy requests (fonts, chart workers)
        return self.seen


def visit(context: BrowserContext, url: str, settle_ms: int = 300) -> Visit:
    return Tab(context).open(url, settle_ms)


def mark_chinese_node(page: Page, selector: str = "body") -> int:
    """Mark the first element under `selector` whose own text holds Han characters with data-cjk-probe;
    returns how many Han characters that text has (0: none found)."""
    return page.evaluate("""(selector) => {
        const han = /[\\u4e00-\\u9fff]/g;
        const root = document.querySelector(selector) || document.body;
        const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
        for (let n = walker.nextNode(); n; n = walker.nextNode()) {
            const el = n.parentElement;
            if (!el || ['SCRIPT', 'STYLE', 'TITLE'].includes(el.tagName) || !el.getClientRects().length) continue;
            const own = [...el.childNodes].filter(c => c.nodeType === 3).map(c => c.textContent).join('');
            const count = (own.match(han) || []).length;
            if (count) {
                document.querySelectorAll('[data-cjk-probe]').forEach(e => e.removeAttribute('data-cjk-probe'));
                el.setAttribute('data-cjk-probe', '1');
                return count;
            }
        }
        return 0;
    }""", selector)


def platform_fonts(context: BrowserContext, page: Page, selector: str) -> list[dict[str, Any]]:
    """The fonts Chromium really drew a node's text with (CDP CSS.getPlatformFontsForNode)."""
    cdp = context.new_cdp_session(page)
    try:
        root = cdp.send("DOM.getDocument", {"depth": 0})["root"]["nodeId"]
        node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        assert node, f"{page.url}: no node matches {selector}"
        cdp.send("CSS.enable")
        return cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]
    finally:
        cdp.detach()


def assert_chinese_drawn_with_cjk_font(context: BrowserContext, page: Page, selector: str = "body") -> str:
    """The Han characters of a Chinese node are drawn by a CJK family, not a Latin one (boxes)."""
    han = mark_chinese_node(page, selector)
    assert han, f"{page.url}: no visible Chinese text under {selector}"
    fonts = platform_fonts(context, page, "[data-cjk-probe]")
    cjk = [f for f in fonts if CJK_FAMILY.search(f["familyName"])]
    assert sum(f["glyphCount"] for f in cjk) >= han, f"{page.url}: {han} Han characters drawn with {fonts}"
    return cjk[0]["familyName"]


def assert_charts_drawn(page: Page, at_least: int = 0, timeout_ms: float = 10_000) -> int:
    """Every chart says it was drawn (data-drawn="1") and really shows something: a canvas with a painted
    pixel, or an svg with shapes."""
    charts = page.locator("canvas.chart, svg.chart")
    count = charts.count()
    assert count >= at_least, f"{page.url}: {count} charts, expected at least {at_least}"
    if count:
        page.wait_for_function("""() => [...document.querySelectorAll('canvas.chart, svg.chart')]
                                   .every(c => c.getAttribute('data-drawn') === '1')""", timeout=timeout_ms)
    blank = page.evaluate("""() => [...document.querySelectorAll('canvas.chart, svg.chart')].map((c, i) => {
        if (c.tagName.toLowerCase() === 'svg')
            return c.querySelectorAll('path, rect, circle, line, polyline, polygon, text').length ? null : i;
        if (!c.width || !c.height) return i;
        const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        for (let k = 3; k < data.length; k += 4) if (data[k]) return null;
        return i;
    }).filter(i => i !== null)""")
    assert not blank, f"{page.url}: charts {blank} are blank"
    return count


def visible_rows(page: Page) -> int:
    return page.locator("#catalog-table tbody tr:not([hidden])").count()


def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    require_binary("chromium")
    require_cjk_font()
    with sync_playwright() as p:
        b = launch(p)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(locale="zh-CN", viewport={"width": 1280, "height": 900})
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture(scope="module")
def site(city_site: tuple[Settings, Path]) -> tuple[Settings, Path]:
    """The seeded city's report (tests/conftest.py ``city_site``: built once per session, shared with
    test_report.py): published batches with quarantined rows, conflicts between copies, a mostly-bad
    enterprise batch held, one registration, GX Data Docs built before the site."""
    return city_site


# ---------------------------------------------------------------- the check itself can fail

def test_font_check_sees_boxes_when_no_cjk_font_is_installed(tmp_path: Path) -> None:
    """The CDP check on a handwritten page: the CJK font with the machine's fonts, a Latin font (Chinese
    drawn as boxes) when fontconfig only knows a Latin font, as on a machine without fonts-noto-cjk."""
    require_binary("chromium")
    require_cjk_font()
    page_file = tmp_path / "zh.html"
    page_file.write_text('<!doctype html><html lang="zh-CN"><head><meta charset="utf-8"><style>body{font-family:'
                         '"Microsoft YaHei","PingFang SC","Noto Sans CJK SC","Source Han Sans SC",sans-serif}'
                         '</style></head><body><h1>合肥市数据质量报告</h1></body></html>', encoding="utf-8")
    fc_list = shutil.which("fc-list")
    assert fc_list
    latin = next(f for f in subprocess.run([fc_list, ":lang=en", "file", "family"], capture_output=True, text=True,
                                           check=True).stdout.splitlines()
                 if f.strip() and not CJK_FAMILY.search(f) and re.search(r"\.(ttf|otf)\b", f))
    fonts = tmp_path / "fonts"
    fonts.mkdir()
    shutil.copy(latin.split(":")[0], fonts)
    conf = tmp_path / "fonts.conf"
    conf.write_text(f'<?xml version="1.0"?><!DOCTYPE fontconfig SYSTEM "fonts.dtd"><fontconfig><dir>{fonts}</dir>'
                    f'<cachedir>{tmp_path / "fc-cache"}</cachedir></fontconfig>', encoding="utf-8")
    import os

    with sync_playwright() as p:
        for env, expect_cjk in (({}, True), ({"FONTCONFIG_FILE": str(conf)}, False)):
            b = launch(p, env={**os.environ, **env})
            try:
                ctx = b.new_context()
                seen = visit(ctx, page_file.as_uri(), settle_ms=0)
                assert not seen.problems(), seen.problems()
                if expect_cjk:
                    assert CJK_FAMILY.search(assert_chinese_drawn_with_cjk_font(ctx, seen.page))
                else:
                    with pytest.raises(AssertionError, match="Han characters drawn with"):
                        assert_chinese_drawn_with_cjk_font(ctx, seen.page)
                    assert mark_chinese_node(seen.page) == len("合肥市数据质量报告")
                    drawn = platform_fonts(ctx, seen.page, "[data-cjk-probe]")
                    assert drawn and not any(CJK_FAMILY.search(f["familyName"]) for f in drawn), drawn
            finally:
                b.close()


def test_visit_records_console_errors_and_external_requests(browser: Browser, tmp_path: Path) -> None:
    """The recorder the site test trusts: a script error, a console.error, a CDN script and a missing local
    file are all caught, and the CDN request never leaves the machine."""
    page_file = tmp_path / "bad.html"
    page_file.write_text('<!doctype html><html><head><script src="https://cdn.example.invalid/chart.js"></script>'
                         '<script src="missing.js"></script></head><body><script>console.error("坏了");'
                         'undefinedFunction();</script></body></html>', encoding="utf-8")
    ctx = browser.new_context()
    try:
        seen = visit(ctx, page_file.as_uri())
    finally:
        ctx.close()
    problems = "\n".join(seen.problems())
    assert "external request blocked: https://cdn.example.invalid/chart.js" in problems
    assert "missing.js" in problems and "坏了" in problems and "undefinedFunction" in problems


def test_chart_check_catches_blank_and_undrawn_charts(browser: Browser, tmp_path: Path) -> None:
    charts = {"drawn": '<canvas class="chart" width="50" height="20"></canvas><script>const c = document.querySelector'
                       '("canvas"); c.getContext("2d").fillRect(0, 0, 5, 5); c.dataset.drawn = "1";</script>',
              "blank": '<canvas class="chart" data-drawn="1"></canvas><svg class="chart" data-drawn="1"></svg>',
              "undrawn": '<svg class="chart"><rect width="5" height="5"/></svg>'}
    ctx = browser.new_context()
    try:
        for name, body in charts.items():
            (tmp_path / f"{name}.html").write_text(f"<!doctype html><html><body>{body}</body></html>", encoding="utf-8")
            page = visit(ctx, (tmp_path / f"{name}.html").as_uri(), settle_ms=0).page
            if name == "drawn":
                assert assert_charts_drawn(page, at_least=1) == 1
            elif name == "blank":
                with pytest.raises(AssertionError, match=r"charts \[0, 1\] are blank"):
                    assert_charts_drawn(page)
            else:
                with pytest.raises(PlaywrightTimeout):
                    assert_charts_drawn(page, timeout_ms=500)
    finally:
        ctx.close()


# ---------------------------------------------------------------- the site

def _pages(root: Path) -> list[Path]:
    return sorted(root.rglob("*.html"))


def test_every_page_loads_without_errors_or_network(site: tuple[Settings, Path], context: BrowserContext) -> None:
    settings, root = site
    pages = _pages(root)
    names = {p.relative_to(root).as_posix() for p in pages}
    assert {"index.html", "conflicts.html", "catalog.html", "open.html", "share.html"} <= names, names
    assert any(n.startswith("departments/") for n in names) and any(n.startswith("datasets/") for n in names)
    assert any(n.startswith("catalog/") for n in names) and "datasets/enterprise.html" in names

    from pipelines.lake.catalog import get_catalog

    raw = get_catalog(settings).load_table("raw.population__person").scan(
        selected_fields=("resident_id", "name", "phone")).to_arrow()
    raw_ids = set(raw["resident_id"].to_pylist())
    personal = {v for column in ("name", "phone") for v in raw[column].to_pylist() if v and len(v) >= 2}
    problems: list[str] = []
    tab = Tab(context)
    for path in pages:
        seen = tab.open(path.as_uri(), settle_ms=100)
        problems += [f"{path.relative_to(root)}: {p}" for p in seen.problems()]
        lang = seen.page.evaluate("document.documentElement.lang")
        if lang != "zh-CN":
            problems.append(f"{path.relative_to(root)}: <html lang={lang!r}>, expected zh-CN")
        if path.parent.name == "departments":  # a department draws its trend, or says it has no data
            charts, empty = (seen.page.locator(x).count() for x in ("canvas.chart, svg.chart", ".empty-state"))
            if not charts and not empty:
                problems.append(f"{path.relative_to(root)}: neither a chart nor an .empty-state")
        text = seen.page.inner_text("body")
        shown = set(re.findall(r"\d{17}[\dX]", text)) & raw_ids
        if shown:
            problems.append(f"{path.relative_to(root)}: unmasked resident ids {sorted(shown)[:3]}")
        clear = sorted(v for v in personal if v in text)  # names and mobiles as the reader sees the page
        if clear:
            problems.append(f"{path.relative_to(root)}: unmasked names or mobiles {clear[:3]}")
        # every local link points at a file of the site (or beside it: Data Docs)
        for href in seen.page.eval_on_selector_all("a[href]", "as => as.map(a => a.href)"):
            if href.startswith("file:") and not Path(unquote(urlsplit(href).path)).exists():
                problems.append(f"{path.relative_to(root)}: broken link {href}")
    tab.page.close()
    assert not problems, "\n".join(problems)


def test_site_of_a_lake_without_results_shows_empty_states(lake_settings: Settings, context: BrowserContext,
                                                           monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Before the first night: every page still opens cleanly, the overview and each department say there is
    nothing yet (in Chinese, drawn with a CJK font) instead of empty charts or a script error."""
    from pipelines.report import build_site
    from pipelines.settings import load_settings

    monkeypatch.setenv("CITYLAKE_REGISTRY_DIR", str(PROJECT_ROOT / "schemas" / "sources"))
    root = build_site(load_settings(), out_dir=tmp_path / "report").parent
    problems: list[str] = []
    tab = Tab(context)
    for path in _pages(root):
        seen = tab.open(path.as_uri(), settle_ms=50)
        problems += [f"{path.relative_to(root)}: {p}" for p in seen.problems()]
        assert_charts_drawn(seen.page)
        rel = path.relative_to(root).as_posix()
        if rel == "index.html" or rel.startswith("departments/"):
            assert seen.page.locator(".empty-state").first.is_visible(), rel
            assert_chinese_drawn_with_cjk_font(context, seen.page, ".empty-state")
    tab.page.close()
    assert not problems, "\n".join(problems)


def _department_page(root: Path, context: BrowserContext) -> Path:
    """A department with data (its page shows charts, not only the empty state)."""
    tab = Tab(context)
    for path in sorted((root / "departments").glob("*.html")):
        seen = tab.open(path.as_uri(), settle_ms=0)
        if seen.page.locator("canvas.chart, svg.chart").count():
            tab.page.close()
            return path
    raise AssertionError(f"no department page under {root / 'departments'} shows a chart")


@pytest.mark.parametrize("page_name", ["overview", "department", "dataset", "conflicts"])
def test_key_pages_draw_charts_and_chinese_with_a_cjk_font(site: tuple[Settings, Path], context: BrowserContext,
                                                           page_name: str) -> None:
    _settings, root = site
    path = {"overview": root / "index.html", "dataset": root / "datasets" / "enterprise.html",
            "conflicts": root / "conflicts.html"}.get(page_name) or _department_page(root, context)
    seen = visit(context, path.as_uri())
    page = seen.page
    assert not seen.problems(), seen.problems()
    at_least = 0 if page_name == "conflicts" else 1  # score trends; the conflicts page is tables only
    charts = assert_charts_drawn(page, at_least=at_least)
    family = assert_chinese_drawn_with_cjk_font(context, page)
    assert_chinese_drawn_with_cjk_font(context, page, "h1")
    if page_name == "overview":
        assert page.locator("#overall-score").inner_text().strip()
        assert page.locator("#worst-datasets").count() == 1
        assert_chinese_drawn_with_cjk_font(context, page, "#worst-datasets")
    if page_name == "dataset":  # the engineers' GX page for the dataset, built beside the lake
        gx = page.locator("a", has_text="GX Data Docs")
        assert gx.count() >= 1 and Path(unquote(urlsplit(gx.first.evaluate("a => a.href")).path)).is_file()
    if page_name == "conflicts":
        assert page.locator("#conflicts-table tbody tr").count() > 0  # the seeded copies disagree
        assert_chinese_drawn_with_cjk_font(context, page, "#conflicts-table")
    shot = screenshot(page, f"report-{page_name}")
    assert shot.stat().st_size > 10_000, (shot, charts, family)


def test_catalog_search_and_filters_hide_rows(site: tuple[Settings, Path], context: BrowserContext) -> None:
    _settings, root = site
    seen = visit(context, (root / "catalog.html").as_uri())
    page = seen.page
    assert not seen.problems(), seen.problems()
    rows = page.locator("#catalog-table tbody tr")
    total = rows.count()
    assert total > 10 and visible_rows(page) == total
    texts = rows.all_inner_texts()
    assert any("std.enterprise" in t for t in texts) and any("raw." in t for t in texts)
    search = page.locator("#catalog-search")

    def search_for(term: str) -> int:
        search.fill(term)  # fires input events, as typing does
        page.wait_for_timeout(100)
        return visible_rows(page)

    expected = sum("enterprise" in t.lower() for t in texts)
    assert 0 < expected < total
    assert search_for("enterprise") == expected
    assert all("enterprise" in t.lower() for t in page.locator("#catalog-table tbody tr:not([hidden])").all_inner_texts())
    chinese = next(w for t in texts for w in re.findall(r"[\u4e00-\u9fff]{2,}", t)
                   if 0 < sum(w in x for x in texts) < total)
    assert search_for(chinese) == sum(chinese in t for t in texts), chinese
    assert search_for("没有这个资源zzz") == 0
    assert search_for("") == total

    # Filters: each <select> narrows the rows to those showing the chosen option, and back to all.
    selects = page.locator("select")
    assert selects.count() >= 1, "catalog.html has no filter"
    for i in range(selects.count()):
        select = selects.nth(i)
        options = [o for o in select.locator("option").all() if (o.get_attribute("value") or "") != ""]
        assert options, f"filter {i} has no option"
        narrowed = False
        for option in options:
            label = option.inner_text().strip()
            select.select_option(value=option.get_attribute("value"))
            page.wait_for_timeout(100)
            shown = page.locator("#catalog-table tbody tr:not([hidden])").all_inner_texts()
            assert all(label in t for t in shown), (label, shown[:3])
            narrowed |= 0 < len(shown) < total
        assert narrowed, f"filter {i} never narrows the rows"
        select.select_option(value="")
        page.wait_for_timeout(100)
        assert visible_rows(page) == total
