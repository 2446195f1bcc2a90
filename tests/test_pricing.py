"""Pricing: the price in force on a request's day, from config overrides, our data file and genai-prices."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from email.utils import parsedate_to_datetime
from importlib.metadata import version

import pytest
from pydantic import ValidationError

from monitor.errors import PricingError
from monitor.money import Cost
from monitor.price_data import load_price_data, parse_price_data
from monitor.pricing import PriceCatalog, PriceRule, price
from monitor.usage import Usage, parse_response
from tests.casefiles import load_cases

NOV_2026 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
JST = timezone(timedelta(hours=9))

# genai-prices moves with every release (its version is in each source it prices, its rates change): these tests
# check our arithmetic on whatever rates the installed release has, never the release's own numbers.
GENAI = f"genai-prices {version('genai-prices')}"
_ZAI_47 = next(r for r in PriceCatalog([], data=()).rows(NOV_2026) if (r.provider, r.model) == ("zai", "glm-4.7"))
IN, OUT = _ZAI_47.input_per_mtok, _ZAI_47.output_per_mtok
CACHED = _ZAI_47.cached_input_per_mtok if _ZAI_47.cached_input_per_mtok is not None else IN
# The issue's worked example: 1M input (200k cached) + 100k output on zai glm-4.7.
WORKED = (800_000 * IN + 200_000 * CACHED + 100_000 * OUT) / 1_000_000


def rule(**fields: object) -> PriceRule:
    """A PriceRule validated the way the config validates [[prices]] tables."""
    return PriceRule.model_validate(fields)


@pytest.fixture
def catalog() -> PriceCatalog:
    return PriceCatalog()


# -- the issue's worked example --------------------------------------------------------------------------------


def test_worked_example_glm_4_7_on_zai_costs_exactly_0_722_usd(catalog: PriceCatalog) -> None:
    usage = Usage(input_tokens=1_000_000, cached_input_tokens=200_000, output_tokens=100_000)

    quote = catalog.quote("zai", "glm-4.7", usage, NOV_2026)

    # 800,000 uncached x 0.60 + 200,000 cached x 0.11 + 100,000 output x 2.20, per million tokens
    assert quote is not None
    assert quote.cost == Cost(WORKED, "USD")
    assert quote.source == f"{GENAI} (zai)"


def test_worked_example_at_the_documented_list_price_is_0_722_usd_and_108_30_jpy() -> None:
    listed = rule(
        provider="zai",
        model="glm-4.7",
        currency="USD",
        effective_from="2025-12-22",
        input_per_mtok="0.60",
        cached_input_per_mtok="0.11",
        output_per_mtok="2.20",
    )
    usage = Usage(input_tokens=1_000_000, cached_input_tokens=200_000, output_tokens=100_000)

    cost = PriceCatalog([listed], data=()).price("zai", "glm-4.7", usage, NOV_2026)

    assert cost == Cost(Decimal("0.722"), "USD")
    assert cost.amount * 150 == Decimal("108.30")  # the JPY figure at the default 150 JPY/USD


def test_module_level_price_has_the_issue_signature() -> None:
    usage = Usage(input_tokens=1_000_000, cached_input_tokens=200_000, output_tokens=100_000)

    assert price("zai", "glm-4.7", usage, NOV_2026) == Cost(WORKED, "USD")
    assert price("ZAI", "GLM-4.7", usage, NOV_2026) == Cost(WORKED, "USD")  # case-insensitive


def test_recorded_zai_response_with_reasoning_is_priced_once_per_output_token(catalog: PriceCatalog) -> None:
    case = next(c for c in load_cases() if c.name == "zai_nonstream_cached_reasoning")
    expect = case.expect
    usage = Usage(
        input_tokens=expect["input_tokens"],
        cached_input_tokens=expect["cached_input_tokens"],
        output_tokens=expect["output_tokens"],
        reasoning_tokens=expect["reasoning_tokens"],
    )
    at = parsedate_to_datetime(case.response.headers["date"])

    cost = catalog.price(case.provider, case.request_model, usage, at)

    # 9 prompt tokens (4 cached), 329 output tokens of which 253 reasoning: reasoning is inside the 329
    assert (expect["input_tokens"], expect["cached_input_tokens"]) == (9, 4)
    assert (expect["output_tokens"], expect["reasoning_tokens"]) == (329, 253)
    assert cost == Cost((5 * IN + 4 * CACHED + 329 * OUT) / 1_000_000, "USD")


def test_recorded_openrouter_free_variant_costs_zero_like_its_usage_cost(catalog: PriceCatalog) -> None:
    case = next(c for c in load_cases() if c.name == "openrouter_nonstream_glm_cached_cost")
    usage = Usage(
        input_tokens=case.expect["input_tokens"],
        cached_input_tokens=case.expect["cached_input_tokens"],
        output_tokens=case.expect["output_tokens"],
    )
    at = parsedate_to_datetime(case.response.headers["date"])

    quote = catalog.quote("openrouter", "z-ai/glm-4.5-air:free", usage, at)

    assert b'"cost":0' in case.response.body
    assert quote is not None
    assert quote.cost == Cost(Decimal(0), "USD")
    assert quote.source.startswith("glm-monitor data")


def test_openrouter_requests_cost_what_the_response_says_they_were_charged(catalog: PriceCatalog) -> None:
    case = next(c for c in load_cases() if c.name == "openrouter_stream_usage_last_chunk")
    usage = parse_response(case.dialect, case.response.body, stream=case.stream)  # type: ignore[arg-type]

    # A model no price list knows: its cost is still exact, as OpenRouter charged it.
    quote = catalog.quote("openrouter", "deepseek/deepseek-v4.1-flash", usage, NOV_2026)

    assert quote is not None
    assert quote.cost == Cost(Decimal("0.000007765"), "USD")
    assert quote.source == "openrouter usage.cost"
    # A GLM model the lists do know is priced by what OpenRouter charged too, not by its list price.
    listed = Usage(input_tokens=1_000_000, output_tokens=0, reported_cost=Decimal("0.42"))
    assert catalog.price("openrouter", "z-ai/glm-4.7", listed, NOV_2026) == Cost(Decimal("0.42"), "USD")
    list_priced = catalog.quote("openrouter", "z-ai/glm-4.7", Usage(input_tokens=1_000_000, output_tokens=0), NOV_2026)
    assert list_priced is not None and list_priced.source.startswith(GENAI)


def test_a_config_override_still_wins_and_other_providers_ignore_a_reported_cost() -> None:
    override = rule(
        provider="openrouter",
        model="z-ai/glm-4.7",
        currency="USD",
        effective_from="2026-01-01",
        input_per_mtok="0.5",
        output_per_mtok="1",
    )
    catalog = PriceCatalog([override])
    usage = Usage(input_tokens=1_000_000, output_tokens=0, reported_cost=Decimal("0.42"))

    quote = catalog.quote("openrouter", "z-ai/glm-4.7", usage, NOV_2026)
    assert quote is not None
    assert (quote.cost, quote.source) == (Cost(Decimal("0.5"), "USD"), "config override")
    zai = catalog.quote("zai", "glm-4.7", usage, NOV_2026)
    assert zai is not None
    assert zai.cost == Cost(IN, "USD")
    assert zai.source != "openrouter usage.cost"


# -- effective-from timelines ----------------------------------------------------------------------------------


def test_override_timeline_old_request_keeps_old_price() -> None:
    catalog = PriceCatalog(
        [
            rule(
                provider="zai",
                model="glm-4.7",
                currency="USD",
                effective_from="2026-01-01",
                input_per_mtok="0.50",
                output_per_mtok="2.00",
            ),
            rule(
                provider="zai",
                model="glm-4.7",
                currency="USD",
                effective_from="2026-06-01",
                input_per_mtok="0.80",
                output_per_mtok="3.00",
            ),
        ]
    )
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)

    # the border is midnight of the accounting day (the display zone, Asia/Tokyo by default)
    last_old_second = catalog.quote("zai", "glm-4.7", usage, datetime(2026, 5, 31, 23, 59, 59, tzinfo=JST))
    first_new = catalog.quote("zai", "glm-4.7", usage, datetime(2026, 6, 1, 0, 0, tzinfo=JST))
    before_any_override = catalog.quote("zai", "glm-4.7", usage, datetime(2025, 12, 31, tzinfo=JST))

    assert last_old_second is not None and first_new is not None and before_any_override is not None
    assert last_old_second.cost == Cost(Decimal("2.50"), "USD")
    assert last_old_second.effective_from == date(2026, 1, 1)
    assert first_new.cost == Cost(Decimal("3.80"), "USD")
    assert first_new.effective_from == date(2026, 6, 1)
    assert last_old_second.source == first_new.source == "config override"
    # before its first rule the override is not in force: the catalog's own price applies
    assert before_any_override.cost == Cost(IN + OUT, "USD")
    assert before_any_override.source.startswith("genai-prices")


def test_effective_day_is_the_accounting_day_of_the_request() -> None:
    catalog = PriceCatalog(
        [
            rule(
                provider="custom:lab", model="glm-4.7", currency="JPY", effective_from="2026-01-01", input_per_mtok=100
            ),
            rule(
                provider="custom:lab", model="glm-4.7", currency="JPY", effective_from="2026-06-01", input_per_mtok=200
            ),
        ]
    )
    usage = Usage(input_tokens=1_000_000)

    # 08:00 on June 1 in Tokyo is still May 31 in UTC, but June 1 is its accounting day (Asia/Tokyo by default);
    # 23:30 UTC on May 31 is 08:30 on June 1 in Tokyo; a naive datetime is read as UTC
    tokyo_morning = datetime(2026, 6, 1, 8, 0, tzinfo=JST)
    naive_late_may_31 = datetime(2026, 5, 31, 23, 30)
    tokyo_late_may_31 = datetime(2026, 5, 31, 23, 30, tzinfo=JST)

    assert catalog.price("custom:lab", "glm-4.7", usage, tokyo_morning) == Cost(Decimal(200), "JPY")
    assert catalog.price("custom:lab", "glm-4.7", usage, naive_late_may_31) == Cost(Decimal(200), "JPY")
    assert catalog.price("custom:lab", "glm-4.7", usage, tokyo_late_may_31) == Cost(Decimal(100), "JPY")
    # a catalog kept in UTC days cuts at UTC midnight instead
    assert PriceCatalog(zone="UTC").accounting_day(tokyo_morning) == date(2026, 5, 31)


def test_genai_prices_dated_prices_are_read_for_the_accounting_day(catalog: PriceCatalog) -> None:
    """genai-prices dates its prices in UTC days; a request gets genai's price of its accounting day (the same
    day as its exchange rate), whatever the installed release's prices are."""
    from genai_prices import Usage as GenaiUsage
    from genai_prices import calc_price

    usage = Usage(input_tokens=1_000_000, cached_input_tokens=0, output_tokens=1_000_000)
    genai_usage = GenaiUsage(input_tokens=1_000_000, output_tokens=1_000_000)
    late_on_the_9th = datetime(2026, 9, 9, 23, 59, tzinfo=JST)
    early_on_the_10th = datetime(2026, 9, 10, 0, 0, tzinfo=JST)  # still the 9th in UTC

    for at, day in ((late_on_the_9th, 9), (early_on_the_10th, 10)):
        quote = catalog.quote("zai", "glm-5.3-flash", usage, at)
        expected = calc_price(
            genai_usage,
            "glm-5.3-flash",
            provider_id="zai",
            genai_request_timestamp=datetime(2026, 9, day, 12, tzinfo=UTC),
        )
        assert quote is not None and quote.cost == Cost(expected.total_price, "USD")


def test_data_file_timeline_bigmodel_glm_5_3_flash_promotion_then_list_price(catalog: PriceCatalog) -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)

    promo = catalog.price("bigmodel", "glm-5.3-flash", usage, datetime(2026, 9, 1, tzinfo=UTC))
    listed = catalog.price("bigmodel", "glm-5.3-flash", usage, datetime(2026, 9, 10, tzinfo=UTC))

    assert promo == Cost(Decimal("1.8"), "CNY")  # 0.4 + 1.4
    assert listed == Cost(Decimal("3.6"), "CNY")  # 0.8 + 2.8


# -- what the data file adds -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "model", "currency"),
    [
        ("zai", "glm-4.7-flash", "USD"),
        ("zai", "glm-4.5-flash", "USD"),
        ("zai", "glm-4.6v-flash", "USD"),
        ("bigmodel", "glm-4.7-flash", "CNY"),
        ("bigmodel", "glm-4-flash-250414", "CNY"),
        ("bigmodel", "glm-z1-flash", "CNY"),
    ],
)
def test_free_flash_models_cost_zero_not_unknown(
    catalog: PriceCatalog, provider: str, model: str, currency: str
) -> None:
    usage = Usage(input_tokens=50_000, cached_input_tokens=10_000, output_tokens=8_000, reasoning_tokens=3_000)

    quote = catalog.quote(provider, model, usage, NOV_2026)

    assert quote is not None
    assert quote.cost == Cost(Decimal(0), currency)
    assert quote.source.startswith("glm-monitor data")


def test_free_flash_image_model_costs_zero(catalog: PriceCatalog) -> None:
    assert catalog.price("zai", "cogview-3-flash", Usage(images=4), NOV_2026) == Cost(Decimal(0), "USD")


def test_dashscope_cached_tokens_cost_40_percent_of_input(catalog: PriceCatalog) -> None:
    usage = Usage(input_tokens=20_000, cached_input_tokens=10_000, output_tokens=0)

    cost = catalog.price("dashscope", "glm-4.5", usage, NOV_2026)

    # lowest tier: CNY 3 per 1M input; 10,000 uncached at 3 and 10,000 cached at 1.2 (= 40% of 3)
    assert cost == Cost(Decimal("0.042"), "CNY")
    assert cost.amount == (10_000 * Decimal(3) + 10_000 * Decimal(3) * Decimal("0.4")) / 1_000_000


def test_every_dashscope_rule_in_the_data_file_charges_cache_hits_at_40_percent() -> None:
    dashscope_rules = [r for r in load_price_data() if r.provider in ("dashscope", "dashscope-intl")]

    assert {r.model for r in dashscope_rules} >= {"glm-4.5", "glm-4.5-air", "glm-4.6", "glm-4.7", "glm-5"}
    for r in dashscope_rules:
        priced = [(t.input_per_mtok, t.cached_input_per_mtok) for t in r.tiers] if r.tiers else []
        priced = priced or [(r.input_per_mtok, r.cached_input_per_mtok)]
        for input_price, cached_price in priced:
            assert input_price is not None and cached_price == input_price * Decimal("0.4"), (r.provider, r.model)
    assert {r.currency for r in dashscope_rules if r.provider == "dashscope"} == {"CNY"}
    assert {r.currency for r in dashscope_rules if r.provider == "dashscope-intl"} == {"USD"}


def test_bigmodel_tier_is_chosen_by_request_size_in_cny(catalog: PriceCatalog) -> None:
    short_answer = Usage(input_tokens=10_000, output_tokens=150)
    long_answer = Usage(input_tokens=10_000, output_tokens=1_000)
    long_prompt = Usage(input_tokens=50_000, output_tokens=1_000)
    long_prompt_cached = Usage(input_tokens=50_000, cached_input_tokens=40_000, output_tokens=1_000)

    # GLM-4.7: input [0, 32K) with output [0, 0.2K): 2 / 8; longer output: 3 / 14; input 32K+: 4 / 16
    assert catalog.price("bigmodel", "glm-4.7", short_answer, NOV_2026) == Cost(Decimal("0.0212"), "CNY")
    assert catalog.price("bigmodel", "glm-4.7", long_answer, NOV_2026) == Cost(Decimal("0.044"), "CNY")
    assert catalog.price("bigmodel", "glm-4.7", long_prompt, NOV_2026) == Cost(Decimal("0.216"), "CNY")
    # cache hits in the 32K+ tier: 0.8 per 1M (20% of that tier's input price)
    assert catalog.price("bigmodel", "glm-4.7", long_prompt_cached, NOV_2026) == Cost(
        (10_000 * Decimal(4) + 40_000 * Decimal("0.8") + 1_000 * Decimal(16)) / 1_000_000, "CNY"
    )
    # GLM-5: 4 in / 18 out per 1M in the lowest tier, 6 / 22 beyond
    assert catalog.price("bigmodel", "glm-5", Usage(input_tokens=31_999, output_tokens=0), NOV_2026) == Cost(
        Decimal("0.127996"), "CNY"
    )
    assert catalog.price("bigmodel", "glm-5", Usage(input_tokens=32_000, output_tokens=0), NOV_2026) == Cost(
        Decimal("0.192"), "CNY"
    )


def test_tier_bounds_are_inclusive() -> None:
    tiered = rule(
        provider="custom:box",
        model="glm-4.7",
        currency="CNY",
        effective_from="2026-01-01",
        tiers=[
            {"max_input_tokens": 1000, "input_per_mtok": 1, "output_per_mtok": 0},
            {"input_per_mtok": 2, "output_per_mtok": 0},
        ],
    )
    catalog = PriceCatalog([tiered], data=())

    assert catalog.price("custom:box", "glm-4.7", Usage(input_tokens=1000), NOV_2026) == Cost(Decimal("0.001"), "CNY")
    assert catalog.price("custom:box", "glm-4.7", Usage(input_tokens=1001), NOV_2026) == Cost(
        Decimal("0.002002"), "CNY"
    )


def test_per_image_prices(catalog: PriceCatalog) -> None:
    two_images = Usage(images=2)

    assert catalog.price("zai", "cogview-4", two_images, NOV_2026) == Cost(Decimal("0.02"), "USD")
    assert catalog.price("zai", "CogView-4-250304", two_images, NOV_2026) == Cost(Decimal("0.02"), "USD")
    assert catalog.price("bigmodel", "cogview-4", two_images, NOV_2026) == Cost(Decimal("0.12"), "CNY")
    assert catalog.price("zai", "glm-image", Usage(images=1), NOV_2026) == Cost(Decimal("0.015"), "USD")
    assert catalog.price("bigmodel", "glm-image", Usage(images=1), NOV_2026) == Cost(Decimal("0.1"), "CNY")


def test_reasoning_tokens_are_not_counted_twice(catalog: PriceCatalog) -> None:
    with_reasoning = Usage(input_tokens=0, output_tokens=1_000_000, reasoning_tokens=800_000)
    without_breakdown = Usage(input_tokens=0, output_tokens=1_000_000)

    assert catalog.price("zai", "glm-4.7", with_reasoning, NOV_2026) == Cost(OUT, "USD")
    assert catalog.price("zai", "glm-4.7", without_breakdown, NOV_2026) == Cost(OUT, "USD")
    assert catalog.price("bigmodel", "glm-5", with_reasoning, NOV_2026) == Cost(Decimal(18), "CNY")


def test_cached_tokens_without_a_cached_price_pay_the_input_price() -> None:
    catalog = PriceCatalog(
        [
            rule(
                provider="custom:box",
                model="m",
                currency="USD",
                effective_from="2026-01-01",
                input_per_mtok=1,
                output_per_mtok=2,
            )
        ],
        data=(),
    )
    usage = Usage(input_tokens=1_000_000, cached_input_tokens=600_000, cache_write_tokens=100_000)

    assert catalog.price("custom:box", "m", usage, NOV_2026) == Cost(Decimal(1), "USD")
    # genai-prices' glm-4-32b has no cached price either: cached tokens pay its input price
    assert PriceCatalog().price("zai", "glm-4-32b-0414-128k", usage, NOV_2026) == Cost(Decimal("0.1"), "USD")


def test_cache_writes_pay_the_cache_write_price_when_known() -> None:
    catalog = PriceCatalog(
        [
            rule(
                provider="custom:box",
                model="m",
                currency="USD",
                effective_from="2026-01-01",
                input_per_mtok=1,
                cached_input_per_mtok="0.1",
                cache_write_per_mtok="1.25",
            )
        ],
        data=(),
    )
    usage = Usage(input_tokens=1_000_000, cached_input_tokens=500_000, cache_write_tokens=200_000)

    # 300,000 x 1 + 500,000 x 0.1 + 200,000 x 1.25
    assert catalog.price("custom:box", "m", usage, NOV_2026) == Cost(Decimal("0.6"), "USD")


def test_coding_plan_requests_cost_zero_in_the_plan_currency(catalog: PriceCatalog) -> None:
    usage = Usage(input_tokens=120_000, cached_input_tokens=100_000, output_tokens=4_000)

    zai = catalog.quote("zai-coding", "glm-5.2", usage, NOV_2026)
    bigmodel = catalog.quote("bigmodel-coding", "glm-4.7", usage, NOV_2026)

    assert zai is not None and bigmodel is not None
    assert zai.cost == Cost(Decimal(0), "USD")
    assert bigmodel.cost == Cost(Decimal(0), "CNY")
    assert zai.source == bigmodel.source == "subscription (Coding Plan)"


# -- unknowns --------------------------------------------------------------------------------------------------


def test_unknown_model_is_none_with_one_warning_naming_provider_and_model(
    catalog: PriceCatalog, caplog: pytest.LogCaptureFixture
) -> None:
    usage = Usage(input_tokens=100, output_tokens=10)
    caplog.set_level(logging.INFO, logger="monitor.pricing")

    first = catalog.price("zai", "glm-9-ultra", usage, NOV_2026)
    second = catalog.price("zai", "GLM-9-Ultra", usage, NOV_2026)
    other_provider = catalog.price("dashscope", "glm-9-ultra", usage, NOV_2026)

    assert first is None and second is None and other_provider is None
    warnings = [r for r in caplog.records if r.name == "monitor.pricing" and r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "'glm-9-ultra'" in warnings[0].getMessage() and "'zai'" in warnings[0].getMessage()
    assert "'dashscope'" in warnings[1].getMessage()


def test_unknown_openrouter_variant_is_not_guessed_from_its_base_model(catalog: PriceCatalog) -> None:
    usage = Usage(input_tokens=100, output_tokens=10)

    assert catalog.price("openrouter", "z-ai/glm-4.7:nitro-unknown", usage, NOV_2026) is None
    assert catalog.price("openrouter", "z-ai/glm-4.7", usage, NOV_2026) is not None


def test_custom_provider_without_a_rule_is_none_with_one_info_message(
    catalog: PriceCatalog, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="monitor.pricing")
    usage = Usage(input_tokens=100, output_tokens=10)

    results = [catalog.price("custom:gpu-box", model, usage, NOV_2026) for model in ("glm-4.7", "glm-5", "glm-5")]

    assert results == [None, None, None]
    records = [r for r in caplog.records if r.name == "monitor.pricing"]
    assert [r.levelno for r in records] == [logging.INFO]
    assert "custom:gpu-box" in records[0].getMessage()


def test_usage_with_nothing_reported_has_no_knowable_cost(
    catalog: PriceCatalog, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="monitor.pricing")
    failed = Usage(model="glm-4.7", finish_reason=None, complete=False)

    assert catalog.price("zai", "glm-4.7", failed, NOV_2026) is None
    assert catalog.price("zai", "no-such-model", failed, NOV_2026) is None
    assert caplog.records == []


def test_partly_reported_usage_treats_missing_counts_as_zero(catalog: PriceCatalog) -> None:
    output_only = Usage(output_tokens=1_000_000)

    assert catalog.price("zai", "glm-4.7", output_only, NOV_2026) == Cost(OUT, "USD")


def test_garbage_counts_never_crash_and_never_price(catalog: PriceCatalog, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="monitor.pricing")

    negative = catalog.price("zai", "glm-4.7", Usage(input_tokens=-5, output_tokens=10), NOV_2026)
    # more cached than input (inconsistent parts): the parts are billed, never a negative remainder
    inconsistent = catalog.price("zai", "glm-4.7", Usage(input_tokens=10, cached_input_tokens=1_000_000), NOV_2026)

    assert negative is None
    assert "negative" in caplog.records[0].getMessage()
    assert inconsistent == Cost(CACHED, "USD")


# -- precedence ------------------------------------------------------------------------------------------------


def test_override_beats_data_beats_genai_prices() -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=0)
    data = [rule(provider="zai", model="glm-4.7", currency="USD", effective_from="2025-01-01", input_per_mtok=5)]
    override = [rule(provider="zai", model="glm-4.7", currency="JPY", effective_from="2025-01-01", input_per_mtok=7)]

    genai_only = PriceCatalog([], data=())
    with_data = PriceCatalog([], data=data)
    with_both = PriceCatalog(override, data=data)

    assert genai_only.price("zai", "glm-4.7", usage, NOV_2026) == Cost(IN, "USD")
    assert with_data.price("zai", "glm-4.7", usage, NOV_2026) == Cost(Decimal(5), "USD")
    assert with_both.price("zai", "glm-4.7", usage, NOV_2026) == Cost(Decimal(7), "JPY")


def test_bigmodel_cny_list_beats_genai_prices_usd_conversion(catalog: PriceCatalog) -> None:
    usage = Usage(input_tokens=1_000_000, output_tokens=0)

    in_cny = catalog.quote("bigmodel", "glm-4.7", usage, NOV_2026)
    only_in_genai = catalog.quote("bigmodel", _genai_only_bigmodel_model(), usage, NOV_2026)

    assert in_cny is not None and only_in_genai is not None
    assert in_cny.cost == Cost(Decimal(4), "CNY")  # 1M input is past 32K: CNY 4 per 1M
    assert only_in_genai.cost.currency == "USD"
    assert only_in_genai.source == f"{GENAI} (zhipuai, USD)"


def _genai_only_bigmodel_model() -> str:
    """A BigModel model that only genai-prices prices (whichever the installed release has)."""
    rows = PriceCatalog().rows(NOV_2026)
    return next(r.model for r in rows if r.provider == "bigmodel" and r.source.startswith(GENAI) and r.input_per_mtok)


def test_override_can_price_a_coding_plan_differently() -> None:
    override = rule(
        provider="zai-coding", model="glm-5.2", currency="USD", effective_from="2026-01-01", input_per_mtok=1
    )

    assert PriceCatalog([override]).price("zai-coding", "glm-5.2", Usage(input_tokens=1_000_000), NOV_2026) == Cost(
        Decimal(1), "USD"
    )


# -- validation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"input_per_mtok": -1},
        {"input_per_mtok": "NaN"},
        {"currency": "EUR"},
        {"colour": "blue"},
        {"per_token": 1},
        {"input_per_mtok": None},  # no price at all
        {"effective_from": "someday"},
        {"model": "  "},
        {"provider": "custom:"},
        {"tiers": []},
        {"tiers": [{"max_input_tokens": 32000, "input_per_mtok": 1, "output_per_mtok": 1}]},  # last tier bounded
        {"tiers": [{"input_per_mtok": 1, "output_per_mtok": 1}]},  # beside a flat input price
        {"input_per_mtok": None, "tiers": [{"input_per_mtok": 1}]},  # tier without an output price
        {"input_per_mtok": None, "tiers": [{"input_per_mtok": 1, "output_per_mtok": 1, "max_tokens": 5}]},
    ],
)
def test_malformed_override_is_rejected_by_validation(bad: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "provider": "zai",
        "model": "glm-4.7",
        "currency": "USD",
        "effective_from": "2026-01-01",
        "input_per_mtok": "0.6",
    }
    fields.update(bad)

    with pytest.raises(ValidationError):
        PriceRule.model_validate(fields)


def test_override_from_toml_keeps_exact_decimals_and_normalises_ids() -> None:
    (parsed,) = parse_price_data(
        """
        [[prices]]
        provider = " ZAI "
        model = "GLM-4.7"
        currency = "USD"
        effective_from = 2026-06-01
        input_per_mtok = 0.1
        """
    )

    assert (parsed.provider, parsed.model) == ("zai", "glm-4.7")
    assert parsed.input_per_mtok == Decimal("0.1")
    assert parsed.effective_from == date(2026, 6, 1)


def test_malformed_price_data_file_raises_pricing_error_naming_the_rule() -> None:
    with pytest.raises(PricingError, match=r"prices\[1\].*'glm-5'"):
        parse_price_data(
            """
            [[prices]]
            provider = "zai"
            model = "glm-4.7"
            currency = "USD"
            effective_from = 2026-06-01
            input_per_mtok = 0.1

            [[prices]]
            provider = "zai"
            model = "glm-5"
            currency = "USD"
            effective_from = 2026-06-01
            input_per_mtok = -0.1
            """,
            origin="test.toml",
        )


def test_two_rules_taking_effect_the_same_day_are_an_error() -> None:
    twin = {"provider": "zai", "model": "glm-4.7", "currency": "USD", "effective_from": "2026-06-01"}

    with pytest.raises(PricingError, match="2026-06-01"):
        PriceCatalog([rule(**twin, input_per_mtok=1), rule(**twin, input_per_mtok=2)])


def test_project_data_file_loads() -> None:
    rules = load_price_data()

    assert len(rules) > 30
    assert all(r.note for r in rules)  # every row says where its price comes from


# -- catalog listing -------------------------------------------------------------------------------------------


def test_rows_list_the_catalog_in_force_with_sources() -> None:
    override = rule(
        provider="custom:gpu-box",
        model="glm-4.7",
        currency="JPY",
        effective_from="2026-01-01",
        input_per_mtok=50,
        output_per_mtok=80,
        note="our own GPU",
    )
    future = rule(provider="zai", model="glm-5", currency="USD", effective_from="2027-01-01", input_per_mtok=9)
    rows = {(r.provider, r.model): r for r in PriceCatalog([override, future]).rows(NOV_2026)}

    genai = rows[("zai", "glm-4.7")]
    assert genai.source == f"{GENAI} (zai)"
    assert (genai.currency, genai.input_per_mtok, genai.output_per_mtok) == ("USD", IN, OUT)

    flash = rows[("zai", "glm-4.7-flash")]
    assert flash.source.startswith("glm-monitor data")
    assert (flash.input_per_mtok, flash.output_per_mtok) == (Decimal(0), Decimal(0))

    own = rows[("custom:gpu-box", "glm-4.7")]
    assert own.source == "config override (our own GPU)"
    assert (own.currency, own.input_per_mtok, own.effective_from) == ("JPY", Decimal(50), date(2026, 1, 1))

    # an override not yet in force does not replace today's price
    assert rows[("zai", "glm-5")].source.startswith("genai-prices")

    bigmodel = rows[("bigmodel", "glm-4.7")]
    assert (bigmodel.currency, bigmodel.source.startswith("glm-monitor data")) == ("CNY", True)
    assert len(bigmodel.tiers) == 3
    assert rows[("bigmodel", _genai_only_bigmodel_model())].source == f"{GENAI} (zhipuai, USD)"

    assert rows[("zai-coding", "*")].source == "subscription (Coding Plan)"
    listed_since = rows[("openrouter", "z-ai/glm-4.7")].effective_from
    assert listed_since is None or listed_since <= NOV_2026.date()
    assert all(model.startswith("z-ai/") for provider, model in rows if provider == "openrouter")
    assert list(rows) == sorted(rows)


def test_rows_show_the_price_of_the_day_asked_for() -> None:
    catalog = PriceCatalog()

    before = {(r.provider, r.model): r for r in catalog.rows(datetime(2026, 9, 9, tzinfo=UTC))}
    after = {(r.provider, r.model): r for r in catalog.rows(datetime(2026, 9, 10, tzinfo=UTC))}

    assert before[("zai", "glm-5.3-flash")].input_per_mtok == Decimal("0.075")
    assert after[("zai", "glm-5.3-flash")].input_per_mtok == Decimal("0.15")
    assert before[("bigmodel", "glm-5.3-flash")].input_per_mtok == Decimal("0.4")
    assert after[("bigmodel", "glm-5.3-flash")].input_per_mtok == Decimal("0.8")


def test_flat_genai_prices_computed_directly_equal_calc_price_for_every_glm_model():
    """The fast path (monitor.genai_linear) must give calc_price's figure exactly, whatever release is installed."""
    from genai_prices import Usage as GenaiUsage
    from genai_prices import calc_price
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from monitor.genai_linear import linear_price

    rows = [r for r in PriceCatalog().rows(NOV_2026) if r.source.startswith(GENAI)]
    genai_ids = {"zai": "zai", "bigmodel": "zhipuai", "openrouter": "openrouter"}
    flat = [(genai_ids[r.provider], r.model) for r in rows if linear_price(genai_ids[r.provider], r.model, NOV_2026)]
    assert len(flat) >= 5  # most GLM prices are flat rates

    @settings(max_examples=60, deadline=None)
    @given(
        st.sampled_from(flat),
        st.integers(0, 2_000_000),
        st.integers(0, 500_000),
        st.integers(0, 50_000),
        st.integers(0, 200_000),
    )
    def same(pick, uncached, cached, write, output):
        provider, model = pick
        usage = GenaiUsage(
            input_tokens=uncached + cached + write,
            cache_read_tokens=cached,
            cache_write_tokens=write,
            output_tokens=output,
        )
        expected = calc_price(usage, model, provider_id=provider, genai_request_timestamp=NOV_2026).total_price
        got = linear_price(provider, model, NOV_2026).cost(uncached + cached + write, cached, write, output)
        assert got == expected

    same()


def test_one_accounting_day_a_price_override_and_an_exchange_rate_change_at_the_same_local_midnight(engine):
    """A price override from 2026-11-16 and a rate stored for 2026-11-16: a request at 00:30 JST on the 16th gets
    both the new price and the new rate; one at 23:30 JST on the 15th gets both old ones (issue 13)."""
    from monitor import analytics
    from monitor.analytics import Filters
    from monitor.events import UsageEvent
    from monitor.fx import store_rates
    from monitor.outcomes import Outcome
    from monitor.rollup import refresh_rollups
    from monitor.writer import write_events

    base = dict(provider="custom:box", model="m", currency="USD", input_per_mtok=1, output_per_mtok=0)
    catalog = PriceCatalog(
        [rule(**base, effective_from="2026-11-01"), rule(**{**base, "input_per_mtok": 2}, effective_from="2026-11-16")]
    )
    store_rates(engine, date(2026, 11, 15), {"USD": Decimal(150)}, "test")
    store_rates(engine, date(2026, 11, 16), {"USD": Decimal(160)}, "test")
    before = datetime(2026, 11, 15, 14, 30, tzinfo=UTC)  # 23:30 JST on the 15th
    after = datetime(2026, 11, 15, 15, 30, tzinfo=UTC)  # 00:30 JST on the 16th
    usage = Usage(input_tokens=1_000_000, output_tokens=0)
    events = []
    for at in (before, after):
        quote = catalog.quote("custom:box", "m", usage, at)
        events.append(
            UsageEvent(
                ts=at,
                source="proxy",
                provider="custom:box",
                model="m",
                vantage="t",
                outcome=Outcome.OK,
                usage=usage,
                cost=quote.cost,
                price_source=quote.source,
            )
        )
    assert [e.cost for e in events] == [Cost(Decimal(1), "USD"), Cost(Decimal(2), "USD")]
    # UTC midnight is not the border: 23:30 UTC on the 15th is already the 16th in Tokyo
    assert catalog.accounting_day(datetime(2026, 11, 15, 23, 30, tzinfo=UTC)) == date(2026, 11, 16)
    assert PriceCatalog(zone="UTC").accounting_day(after) == date(2026, 11, 15)

    write_events(engine, events)
    refresh_rollups(engine, now=datetime(2026, 11, 17, tzinfo=UTC))
    window = Filters(datetime(2026, 11, 15, tzinfo=UTC), datetime(2026, 11, 17, tzinfo=UTC))
    days = analytics.costs(engine, window, period="day", by=(), zone="Asia/Tokyo", catalog=catalog)
    by_day = {str(r.period): (r.jpy, r.usd_jpy) for r in days.itertuples()}
    assert by_day == {"2026-11-15": (Decimal(150), Decimal(150)), "2026-11-16": (Decimal(320), Decimal(160))}
