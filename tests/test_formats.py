"""One percentage format for the report, catalog.csv and the catalog CLI: never 100 % with a failure,
never 0.00 % for a rate that is not zero."""

from __future__ import annotations

import pytest

from pipelines.formats import percent


@pytest.mark.parametrize(("value", "shown"), [
    (None, "—"),  # no rules: no score, not 100 %
    (1.0, "100.00%"), (1, "100.00%"), (0.0, "0.00%"),
    (0.99999, "99.99%"),  # one failure in 100 000: rounded down, not up to 100.00 %
    (1 - 1 / 2000, "99.95%"),
    (0.29, "29.00%"), (0.95, "95.00%"), (0.1 + 0.2, "30.00%"),  # float noise does not push a step down
    (0.000001, "<0.01%"), (0.00009, "<0.01%"), (0.0001, "0.01%"),  # a rate that is not zero never reads 0.00 %
])
def test_percent_rounds_down_and_marks_tiny_rates(value: float | None, shown: str) -> None:
    assert percent(value) == shown


def test_one_format_in_pages_catalog_csv_and_cli() -> None:
    from pipelines.catalog import cli, export
    from pipelines.report.pages import pct

    score = 1 - 1 / 2000  # std.insured's 99.95 %: catalog.csv once said 100.0 %
    assert pct(score) == cli._score(score) == "99.95%"
    assert pct(0.99999) == cli._score(0.99999) == "99.99%"
    assert percent(0.999, digits=1) == "99.9%" and percent(0.0001, digits=1) == "<0.1%"
    from types import SimpleNamespace

    assert export._score(SimpleNamespace(quality_score=0.99999)) == "99.99%"  # type: ignore[arg-type]
    assert export._score(SimpleNamespace(quality_score=None)) == "—"  # type: ignore[arg-type]
