"""citylake's custom GX Core expectations (national identifiers, division table, dates, bounds).

They make the suites under ``expectations/`` loadable and runnable by plain GX (pandas engine), which is
also the benchmark's baseline. citylake itself evaluates the same suites with the vectorised functions of
``pipelines.quality.validators`` (see ``pipelines.quality.suites``): GX is the spec and the result format.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pandas as pd
import pyarrow as pa
from great_expectations.core.suite_parameters import SuiteParameterDict
from great_expectations.execution_engine import PandasExecutionEngine
from great_expectations.expectations.expectation import ColumnMapExpectation, ColumnPairMapExpectation
from great_expectations.expectations.metrics.map_metric_provider import (
    ColumnMapMetricProvider,
    ColumnPairMapMetricProvider,
    column_condition_partial,
    column_pair_condition_partial,
)
from great_expectations.render import LegacyRendererType, RenderedStringTemplateContent
from great_expectations.render.renderer.renderer import renderer
from great_expectations.render.util import num_to_str

from pipelines.quality import validators as v


def _series(result: pa.Array, index: pd.Index) -> pd.Series:
    return pd.Series(result.fill_null(True).to_numpy(zero_copy_only=False), index=index)


def _arrow(column: pd.Series) -> pa.Array:
    return pa.array(column, from_pandas=True)


class ResidentIdCheckDigit(ColumnMapMetricProvider):
    condition_metric_name = "column_values.citylake.resident_id_check_digit"

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, **_: Any) -> pd.Series:
        return _series(v.resident_id_check_digit(_arrow(column)), column.index)


class ResidentIdBirthDate(ColumnMapMetricProvider):
    condition_metric_name = "column_values.citylake.resident_id_birth_date"
    condition_value_keys = ("reference_date",)

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, reference_date: str, **_: Any) -> pd.Series:
        from datetime import date

        return _series(v.resident_id_birth_date(_arrow(column), date.fromisoformat(reference_date)), column.index)


class ResidentIdRegion(ColumnMapMetricProvider):
    condition_metric_name = "column_values.citylake.resident_id_region"

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, **_: Any) -> pd.Series:
        return _series(v.resident_id_region(_arrow(column), v.division_codes()), column.index)


class UsccValid(ColumnMapMetricProvider):
    condition_metric_name = "column_values.citylake.uscc"

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, **_: Any) -> pd.Series:
        return _series(v.uscc_valid(_arrow(column)), column.index)


class UsccOrgCode(ColumnMapMetricProvider):
    condition_metric_name = "column_values.citylake.uscc_org_code"

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, **_: Any) -> pd.Series:
        return _series(v.uscc_org_code_valid(_arrow(column)), column.index)


class DivisionCodeValid(ColumnMapMetricProvider):
    condition_metric_name = "column_values.citylake.division_code"
    condition_value_keys = ("code_list",)

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, code_list: str, **_: Any) -> pd.Series:
        return _series(v.division_code_valid(_arrow(column), v.code_table(code_list)), column.index)


class MobileValid(ColumnMapMetricProvider):
    condition_metric_name = "column_values.citylake.mobile"

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, **_: Any) -> pd.Series:
        return _series(v.mobile_valid(_arrow(column)), column.index)


class NotInFuture(ColumnMapMetricProvider):
    condition_metric_name = "column_values.citylake.not_in_future"
    condition_value_keys = ("reference_date",)

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, reference_date: str, **_: Any) -> pd.Series:
        from datetime import date

        return _series(v.date_not_future(_arrow(column), date.fromisoformat(reference_date)), column.index)


class SexAgreesWithId(ColumnPairMapMetricProvider):
    condition_metric_name = "column_pair_values.citylake.sex_agrees_with_resident_id"

    @column_pair_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column_A: pd.Series, column_B: pd.Series, **_: Any) -> pd.Series:  # noqa: N803
        return _series(v.resident_id_sex(_arrow(column_A), _arrow(column_B)), column_A.index)


class BirthDateAgreesWithId(ColumnPairMapMetricProvider):
    condition_metric_name = "column_pair_values.citylake.birth_date_agrees_with_resident_id"

    @column_pair_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column_A: pd.Series, column_B: pd.Series, **_: Any) -> pd.Series:  # noqa: N803
        return _series(v.resident_id_birth_date_agrees(_arrow(column_A), _arrow(column_B)), column_A.index)


class InHefei(ColumnPairMapMetricProvider):
    condition_metric_name = "column_pair_values.citylake.in_hefei"

    @column_pair_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column_A: pd.Series, column_B: pd.Series, **_: Any) -> pd.Series:  # noqa: N803
        return _series(v.in_bounds(_arrow(column_A), _arrow(column_B)), column_A.index)


# What each rule demands, in GX's prescriptive wording, for Data Docs (without it GX prints the bare
# type and kwargs); the rule's Chinese description from the suite follows in brackets.
_TEMPLATES = {
    "expect_column_values_to_have_valid_resident_id_check_digit":
        "values must end in a valid GB 11643 check character (ISO 7064 MOD 11-2)",
    "expect_column_values_to_have_real_resident_id_birth_date":
        "values must embed a real birth date not after $reference_date",
    "expect_column_values_to_have_known_resident_id_region":
        "values must start with a division code of GB/T 2260 (historical codes count)",
    "expect_column_values_to_be_valid_uscc":
        "values must be GB 32100 unified social credit codes with a valid check character",
    "expect_column_values_to_have_valid_uscc_org_code":
        "values must embed a GB 11714 organisation code with a valid check character",
    "expect_column_values_to_be_valid_mobile_number": "values must be 11-digit mainland mobile numbers (13x to 19x)",
    "expect_column_values_to_be_valid_division_code":
        "values must be administrative division codes of GB/T 2260 (code list $code_list)",
    "expect_column_values_to_not_be_in_the_future": "values must not be later than $reference_date",
    "expect_column_pair_values_sex_code_to_agree_with_resident_id":
        "$column_B must agree with the sex digit (the 17th) of $column_A",
    "expect_column_pair_values_birth_date_to_agree_with_resident_id":
        "$column_B must be the birth date embedded in $column_A",
    "expect_column_pair_values_to_be_inside_hefei": "($column_A, $column_B) must lie inside Hefei's administrative extent",
}


class _Prescriptive:
    """Renders the rule for Data Docs from ``_TEMPLATES``, like GX's built-in expectations do."""

    @classmethod
    @renderer(renderer_type=LegacyRendererType.PRESCRIPTIVE)
    def _prescriptive_renderer(cls, configuration: Any = None, result: Any = None,
                               runtime_configuration: dict[str, Any] | None = None,
                               **_: Any) -> list[RenderedStringTemplateContent]:
        runtime_configuration = runtime_configuration or {}
        config: Any = configuration or (result.expectation_config if result is not None else None)
        params = {k: v.get("$PARAMETER", v) if isinstance(v, dict) else v for k, v in dict(config.kwargs).items()}
        template = _TEMPLATES[config.type]
        if "column" in params and runtime_configuration.get("include_column_name") is not False:
            template = f"$column {template}"
        mostly = params.get("mostly")
        if isinstance(mostly, int | float) and mostly < 1:
            params["mostly_pct"] = num_to_str(mostly * 100, no_scientific=True)
            template += ", at least $mostly_pct % of the time"
        description = (config.meta or {}).get("description")
        if description:  # plain text, not a parameter badge
            template += f" ({description.replace('$', '$$')})"
        return [RenderedStringTemplateContent(
            content_block_type="string_template",
            string_template={"template": f"{template}.", "params": params,
                             "styling": runtime_configuration.get("styling")})]


class ExpectColumnValuesToHaveValidResidentIdCheckDigit(_Prescriptive, ColumnMapExpectation):
    """GB 11643 / ISO 7064 MOD 11-2 check character of a resident ID."""

    map_metric = "column_values.citylake.resident_id_check_digit"
    success_keys: ClassVar[tuple[str, ...]] = ("mostly",)


class ExpectColumnValuesToHaveRealResidentIdBirthDate(_Prescriptive, ColumnMapExpectation):
    """The resident ID's birth date is a real date, not after the run's reference date."""

    reference_date: str | SuiteParameterDict  # {"$PARAMETER": "reference_date"}: the run's today
    map_metric = "column_values.citylake.resident_id_birth_date"
    success_keys: ClassVar[tuple[str, ...]] = ("reference_date", "mostly")


class ExpectColumnValuesToHaveKnownResidentIdRegion(_Prescriptive, ColumnMapExpectation):
    """The resident ID's address code is in the GB/T 2260 table (historical codes count)."""

    map_metric = "column_values.citylake.resident_id_region"
    success_keys: ClassVar[tuple[str, ...]] = ("mostly",)


class ExpectColumnValuesToBeValidUscc(_Prescriptive, ColumnMapExpectation):
    """GB 32100 unified social credit code: charset and check character."""

    map_metric = "column_values.citylake.uscc"
    success_keys: ClassVar[tuple[str, ...]] = ("mostly",)


class ExpectColumnValuesToHaveValidUsccOrgCode(_Prescriptive, ColumnMapExpectation):
    """The GB 11714 organisation code embedded in a USCC (positions 9–17) has a valid check character."""

    map_metric = "column_values.citylake.uscc_org_code"
    success_keys: ClassVar[tuple[str, ...]] = ("mostly",)


class ExpectColumnValuesToBeValidDivisionCode(_Prescriptive, ColumnMapExpectation):
    """A GB/T 2260 administrative division code of the named code list (``schemas/standards/code_lists``:
    Anhui's table plus Hefei's development zones)."""

    code_list: str
    map_metric = "column_values.citylake.division_code"
    success_keys: ClassVar[tuple[str, ...]] = ("code_list", "mostly")


class ExpectColumnValuesToBeValidMobileNumber(_Prescriptive, ColumnMapExpectation):
    """Mainland mobile number ``^1[3-9]\\d{9}$``."""

    map_metric = "column_values.citylake.mobile"
    success_keys: ClassVar[tuple[str, ...]] = ("mostly",)


class ExpectColumnValuesToNotBeInTheFuture(_Prescriptive, ColumnMapExpectation):
    """A date or time not after the run's reference date (Asia/Shanghai)."""

    reference_date: str | SuiteParameterDict  # {"$PARAMETER": "reference_date"}: the run's today
    map_metric = "column_values.citylake.not_in_future"
    success_keys: ClassVar[tuple[str, ...]] = ("reference_date", "mostly")


class ExpectColumnPairValuesSexCodeToAgreeWithResidentId(_Prescriptive, ColumnPairMapExpectation):
    """GB/T 2261.1 sex code (column_B) agrees with the resident ID's 17th digit (column_A)."""

    map_metric = "column_pair_values.citylake.sex_agrees_with_resident_id"
    ignore_row_if: str = "either_value_is_missing"
    success_keys: ClassVar[tuple[str, ...]] = ("column_A", "column_B", "ignore_row_if", "mostly")


class ExpectColumnPairValuesBirthDateToAgreeWithResidentId(_Prescriptive, ColumnPairMapExpectation):
    """The birth date (column_B) is the one embedded in the resident ID (column_A)."""

    map_metric = "column_pair_values.citylake.birth_date_agrees_with_resident_id"
    ignore_row_if: str = "either_value_is_missing"
    success_keys: ClassVar[tuple[str, ...]] = ("column_A", "column_B", "ignore_row_if", "mostly")


class ExpectColumnPairValuesToBeInsideHefei(_Prescriptive, ColumnPairMapExpectation):
    """Longitude (column_A) and latitude (column_B) inside Hefei's administrative extent."""

    map_metric = "column_pair_values.citylake.in_hefei"
    ignore_row_if: str = "either_value_is_missing"
    success_keys: ClassVar[tuple[str, ...]] = ("column_A", "column_B", "ignore_row_if", "mostly")
