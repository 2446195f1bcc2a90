"""Analytics on real SQLite and Postgres: the numbers a user checks against what they know they sent."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import partial
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from monitor.analytics import (
    COMPARE_COLUMNS,
    LATENCY_COLUMNS,
    PEAK_COLUMNS,
    PROFILE_COLUMNS,
    Filters,
    PeakWindow,
    compare_providers,
    cost_columns,
    costs,
    dimensions,
    health,
    latency_percentiles,
    latency_profile,
    outcome_breakdown,
    peak_slowdown,
    spend_forecast,
    throttle_rates,
)
from monitor.events import ProbeResult, UsageEvent
from monitor.fx import store_rates
from monitor.money import Cost
from monitor.outcomes import Outcome
from monitor.pricing import PriceCatalog, PriceRule
from monitor.rollup import refresh_rollups
from monitor.rollup_days import DEFAULT_DAY_ZONES
from monitor.usage import Usage
from monitor.writer import write_events

CST = ZoneInfo("Asia/Shanghai")
JST = ZoneInfo("Asia/Tokyo")


def refresh(engine, now: datetime) -> None:
    report = refresh_rollups(engine, now=now)
    assert report.skipped is None


# --- peak hours ----------------------------------------------------------------------------------------------


def peak_week(now: datetime, rng: random.Random) -> list[ProbeResult]:
    """Seven days of probes every 5 minutes for two targets: TTFT x3 from 15:00 to 18:00 CST, 5% throttled."""
    events = []
    t = now - timedelta(days=7)
    while t < now:
        peak = 15 <= t.astimezone(CST).hour < 18
        for provider, model in (("zai", "glm-4.7"), ("openrouter", "z-ai/glm-4.7")):
            if rng.random() < 0.05:
                events.append(
                    ProbeResult(
                        ts=t,
                        provider=provider,
                        model=model,
                        vantage="tokyo",
                        outcome=Outcome.RATE_LIMITED,
                        http_status=429,
                        error_code="1302",
                    )
                )
                continue
            ttft = rng.lognormvariate(np.log(900 if peak else 300), 0.25)
            events.append(
                ProbeResult(
                    ts=t,
                    provider=provider,
                    model=model,
                    vantage="tokyo",
                    outcome=Outcome.OK,
                    http_status=200,
                    ttft_ms=ttft,
                    total_ms=ttft + rng.lognormvariate(np.log(800), 0.2),
                    tokens_per_s=rng.lognormvariate(np.log(50), 0.2),
                )
            )
        t += timedelta(minutes=5)
    return events


def test_peak_slowdown_and_hourly_profile_find_the_3x_window(engine):
    now = datetime(2026, 11, 20, 6, 0, tzinfo=UTC)
    write_events(engine, peak_week(now, random.Random(8)))
    refresh(engine, now)

    ratios = peak_slowdown(engine, now=now)

    assert list(ratios.columns) == list(PEAK_COLUMNS)
    assert sorted(ratios["provider"]) == ["openrouter", "zai"]
    for row in ratios.itertuples():
        assert row.ratio == pytest.approx(3.0, rel=0.10)
        assert row.peak_median == pytest.approx(900, rel=0.10)
        assert row.offpeak_median == pytest.approx(300, rel=0.10)
        # 7 days x 3 peak hours x 12 probes, minus the throttled ones (no TTFT).
        assert 220 < row.peak_samples < 252
        assert 1500 < row.offpeak_samples < 1764
        assert row.window == "15:00-18:00 Asia/Shanghai"

    week = Filters.last(timedelta(days=7), now=now)
    for zone, peak_hours in (("Asia/Shanghai", {15, 16, 17}), ("Asia/Tokyo", {16, 17, 18})):
        profile = latency_profile(engine, week, zone=zone)
        assert list(profile.columns) == list(PROFILE_COLUMNS)
        assert set(profile["weekday"]) == set(range(7))
        slow = profile[profile["p50"] > 600]
        assert set(slow["hour"]) == peak_hours, zone
        # Every weekday shows the same window, for both providers.
        assert len(slow) == 3 * 7 * 2


def test_a_configured_peak_window_that_wraps_midnight(engine):
    now = datetime(2026, 11, 20, 6, 0, tzinfo=UTC)
    write_events(engine, peak_week(now, random.Random(9)))
    refresh(engine, now)

    ratios = peak_slowdown(engine, now=now, window=PeakWindow(22, 2, "Asia/Shanghai"))

    # Nothing is slow around midnight: the ratio says so.
    assert ratios["ratio"].between(0.85, 1.15).all()
    assert (ratios["window"] == "22:00-02:00 Asia/Shanghai").all()


# --- latency over time, throttling, breakdowns ---------------------------------------------------------------


def traffic_day(day: datetime) -> list[ProbeResult | UsageEvent]:
    """One UTC day: probes (10% HTTP 429 with code 1302) and proxy traffic (20% 429 1305, 10% 429 1302)."""
    events: list[ProbeResult | UsageEvent] = []
    for minute in range(0, 24 * 60, 6):
        ts = day + timedelta(minutes=minute)
        throttled = minute % 60 == 0
        events.append(
            ProbeResult(
                ts=ts,
                provider="zai",
                model="glm-4.7",
                vantage="tokyo",
                outcome=Outcome.RATE_LIMITED if throttled else Outcome.OK,
                http_status=429 if throttled else 200,
                error_code="1302" if throttled else None,
                retry_after_s=10.0 if throttled else None,
                ttft_ms=None if throttled else 400.0,
                total_ms=120.0 if throttled else 1400.0,
                tokens_per_s=None if throttled else 55.0,
            )
        )
        for i in range(10):
            outcome, status, code = Outcome.OK, 200, None
            if i < 2:
                outcome, status, code = Outcome.OVERLOADED, 429, "1305"
            elif i == 2:
                outcome, status, code = Outcome.CONCURRENCY_LIMITED, 429, "1302"
            events.append(
                UsageEvent(
                    ts=ts,
                    source="proxy",
                    provider="zai",
                    model="glm-4.7",
                    vantage="tokyo",
                    app="crm",
                    outcome=outcome,
                    http_status=status,
                    error_code=code,
                )
            )
    return events


def test_429_rates_for_probes_and_real_traffic_are_reported_apart(engine):
    day = datetime(2026, 11, 3, tzinfo=UTC)
    write_events(engine, traffic_day(day))
    refresh(engine, day + timedelta(days=1))
    window = Filters(day, day + timedelta(days=1))

    probes = throttle_rates(engine, window, traffic="probe", granularity=None)
    real = throttle_rates(engine, window, traffic="real", granularity=None)

    assert probes.to_dict("records") == [
        {
            "provider": "zai",
            "model": "glm-4.7",
            "source": "probe",
            "requests": 240,
            "ok": 216,
            "throttled": 24,
            "http_429": 24,
            "rate_429": 0.1,
            "throttled_rate": 0.1,
            "retry_after_mean_s": 10.0,
            "retry_after_max_s": 10.0,
        }
    ]
    (row,) = real.to_dict("records")
    assert (row["source"], row["requests"], row["http_429"], row["throttled"]) == ("proxy", 2400, 720, 720)
    assert row["rate_429"] == pytest.approx(0.3)

    hourly = throttle_rates(engine, window, traffic="real", granularity="hour", zone="UTC")
    assert hourly["rate_429"].tolist() == pytest.approx([0.3] * 24)
    assert hourly["period"].iloc[0] == pd.Timestamp(day)

    codes = outcome_breakdown(engine, window, traffic="real", granularity=None)
    assert codes[["outcome", "error_code", "requests", "http_429"]].to_dict("records") == [
        {"outcome": "ok", "error_code": "", "requests": 1680, "http_429": 0},
        {"outcome": "overloaded", "error_code": "1305", "requests": 480, "http_429": 480},
        {"outcome": "concurrency_limited", "error_code": "1302", "requests": 240, "http_429": 240},
    ]
    assert codes["share"].sum() == pytest.approx(1.0)
    probe_codes = outcome_breakdown(engine, window, traffic="probe", granularity="day", zone="UTC")
    assert set(zip(probe_codes["outcome"], probe_codes["error_code"], strict=True)) == {
        ("ok", ""),
        ("rate_limited", "1302"),
    }
    # Selecting only transport traffic leaves nothing: all of it came through the proxy.
    assert throttle_rates(engine, Filters(day, day + timedelta(days=1), sources=["transport"]), traffic="real").empty


def test_latency_over_time_by_hour_and_local_day(engine):
    day = datetime(2026, 11, 3, tzinfo=UTC)
    write_events(engine, traffic_day(day))
    refresh(engine, day + timedelta(days=1))
    window = Filters(day, day + timedelta(days=1))

    hourly = latency_percentiles(engine, window, granularity="hour", zone="Asia/Tokyo")
    daily = latency_percentiles(engine, window, granularity="day", zone="Asia/Tokyo")

    assert list(hourly.columns) == list(LATENCY_COLUMNS)
    ttft = hourly[hourly["metric"] == "ttft_ms"]
    assert len(ttft) == 24
    assert (ttft["samples"] == 9).all()  # 10 probes an hour, one throttled without a TTFT
    assert ttft["p50"].to_numpy() == pytest.approx(400, rel=0.024)
    assert ttft["period"].iloc[0] == pd.Timestamp("2026-11-03 09:00", tz="Asia/Tokyo")
    # A UTC day is 09:00 to 09:00 in Tokyo: it spans two local days.
    assert list(daily["period"].unique()) == [
        pd.Timestamp("2026-11-03", tz="Asia/Tokyo"),
        pd.Timestamp("2026-11-04", tz="Asia/Tokyo"),
    ]
    daily_ttft = daily[daily["metric"] == "ttft_ms"]
    assert daily_ttft["samples"].tolist() == [15 * 9, 9 * 9]
    assert daily_ttft["mean"].to_numpy() == pytest.approx(400.0)


# --- health --------------------------------------------------------------------------------------------------


def test_health_says_healthy_throttled_or_down_from_the_last_hour(engine):
    now = datetime(2026, 11, 3, 10, 20, tzinfo=UTC)
    events = []
    for i in range(16):  # every 5 minutes over the last 80 minutes
        ts = now - timedelta(minutes=5 * i + 1)
        events.append(
            ProbeResult(ts=ts, provider="zai", model="glm-4.7", vantage="tokyo", outcome=Outcome.OK, ttft_ms=300.0)
        )
        limited = i % 3 == 0
        events.append(
            ProbeResult(
                ts=ts,
                provider="bigmodel",
                model="glm-4.7",
                vantage="tokyo",
                outcome=Outcome.CONCURRENCY_LIMITED if limited else Outcome.OK,
                http_status=429 if limited else 200,
                error_code="1302" if limited else None,
                ttft_ms=None if limited else 700.0,
            )
        )
        events.append(
            ProbeResult(
                ts=ts,
                provider="dashscope",
                model="glm-4.7",
                vantage="tokyo",
                outcome=Outcome.OK if i % 4 == 3 else Outcome.TIMEOUT,
                ttft_ms=2500.0 if i % 4 == 3 else None,
            )
        )
    # Two hours ago everything failed at Z.ai: outside the window, it no longer counts.
    events.append(
        ProbeResult(
            ts=now - timedelta(hours=3), provider="zai", model="glm-4.7", vantage="tokyo", outcome=Outcome.TIMEOUT
        )
    )
    write_events(engine, events)
    refresh(engine, now)

    got = {h.provider: h for h in health(engine, now=now)}

    assert {p: h.status for p, h in got.items()} == {"bigmodel": "throttled", "dashscope": "down", "zai": "healthy"}
    zai, big, dash = got["zai"], got["bigmodel"], got["dashscope"]
    assert zai.requests == 16 and zai.median_ttft_ms == pytest.approx(300, rel=0.024)
    assert zai.last_outcome == "ok" and zai.last_ts == now - timedelta(minutes=1)
    assert zai.since == datetime(2026, 11, 3, 9, tzinfo=UTC)
    assert big.http_429 == 6 and big.rate_429 == pytest.approx(6 / 16)
    assert big.last_outcome == "concurrency_limited" and big.last_error_code == "1302"
    assert dash.ok == 4 and dash.failed == 12 and dash.last_outcome == "timeout"
    assert "4 of 16" in dash.reason
    assert health(engine, now=now, filters=Filters(now, now, providers=["zai"]))[0].provider == "zai"


# --- side by side --------------------------------------------------------------------------------------------


def test_the_same_model_across_providers_side_by_side(engine):
    now = datetime(2026, 11, 20, 6, 0, tzinfo=UTC)
    write_events(engine, peak_week(now, random.Random(10)))
    refresh(engine, now)

    table = compare_providers(engine, Filters.last(timedelta(days=7), now=now))

    assert list(table.columns) == list(COMPARE_COLUMNS)
    assert table["model_family"].tolist() == ["glm-4.7", "glm-4.7"]
    assert table["provider"].tolist() == ["openrouter", "zai"]
    zai = table.set_index("provider").loc["zai"]
    assert zai["currency"] == "USD"
    # Z.ai's GLM-4.7 list price, as the catalog has it (genai-prices' rates move with its releases).
    listed = next(r for r in PriceCatalog().rows(now) if (r.provider, r.model) == ("zai", "glm-4.7"))
    assert (zai["input_per_mtok"], zai["output_per_mtok"], zai["cached_input_per_mtok"]) == (
        listed.input_per_mtok,
        listed.output_per_mtok,
        listed.cached_input_per_mtok,
    )
    assert 0.03 < zai["rate_429"] < 0.07
    assert zai["ttft_p50_ms"] < zai["ttft_p95_ms"]


# --- costs ---------------------------------------------------------------------------------------------------

NOV_START = datetime(2026, 11, 1, tzinfo=JST)
DEC_START = datetime(2026, 12, 1, tzinfo=JST)
PRICE_CHANGE = date(2026, 11, 16)  # a UTC day, like every price rule
RATE_CHANGE = date(2026, 11, 20)
RATES = {
    date(2026, 11, 1): {"USD": Decimal("150.25"), "CNY": Decimal("21.10")},
    RATE_CHANGE: {"USD": Decimal("153.40"), "CNY": Decimal("21.35")},
}


def reference_catalog() -> PriceCatalog:
    def rule(**fields: object) -> PriceRule:
        return PriceRule.model_validate(fields)

    return PriceCatalog(
        [
            rule(
                provider="zai",
                model="glm-4.7",
                currency="USD",
                effective_from="2026-10-01",
                input_per_mtok="0.60",
                cached_input_per_mtok="0.11",
                output_per_mtok="2.20",
            ),
            rule(
                provider="zai",
                model="glm-4.7",
                currency="USD",
                effective_from=PRICE_CHANGE,
                input_per_mtok="0.80",
                cached_input_per_mtok="0.15",
                output_per_mtok="3.00",
            ),
            rule(
                provider="bigmodel",
                model="glm-5",
                currency="CNY",
                effective_from="2026-10-01",
                input_per_mtok="4",
                cached_input_per_mtok="1",
                output_per_mtok="18",
            ),
        ]
    )


def reference_month(catalog: PriceCatalog) -> list[UsageEvent]:
    """A month of usage in Tokyo time, priced the way the capture path prices it."""
    rng = random.Random(2026)
    events = []
    for day in range(30):
        base = NOV_START + timedelta(days=day)
        for _ in range(40):
            ts = (base + timedelta(seconds=rng.uniform(0, 86_399.999))).astimezone(UTC)
            provider, model = rng.choice([("zai", "glm-4.7"), ("bigmodel", "glm-5")])
            usage = Usage(
                input_tokens=(n := rng.randint(500, 60_000)),
                cached_input_tokens=rng.randint(0, n // 2),
                output_tokens=rng.randint(10, 4_000),
            )
            events.append(
                UsageEvent(
                    ts=ts,
                    source="proxy",
                    provider=provider,
                    model=model,
                    vantage="tokyo",
                    app=rng.choice(["crm", "chatbot"]),
                    outcome=Outcome.OK,
                    usage=usage,
                    cost=catalog.price(provider, model, usage, ts),
                )
            )
    return events


def rate_on(day: date, currency: str) -> Decimal:
    return RATES[RATE_CHANGE if day >= RATE_CHANGE else date(2026, 11, 1)][currency]


def test_costs_per_day_and_model_match_a_hand_computed_month(engine):
    catalog = reference_catalog()
    events = reference_month(catalog)
    write_events(engine, events)
    for day, rates in RATES.items():
        store_rates(engine, day, rates, source="manual")  # type: ignore[arg-type]
    refresh(engine, DEC_START)

    # By hand: each event's cost summed per Tokyo day and model, converted at that day's rate.
    native: dict[tuple[date, str], Decimal] = defaultdict(Decimal)
    savings: dict[tuple[date, str], Decimal] = defaultdict(Decimal)
    for ev in events:
        assert ev.cost is not None
        day = ev.ts.astimezone(JST).date()
        native[(day, ev.model or "")] += ev.cost.amount
        cached = Decimal(ev.usage.cached_input_tokens or 0)
        if ev.provider == "zai":
            new = ev.ts.date() >= PRICE_CHANGE
            saved = cached * (Decimal("0.65") if new else Decimal("0.49")) / 1_000_000
        else:
            saved = cached * Decimal(3) / 1_000_000
        savings[(day, ev.model or "")] += saved
    currency = {"glm-4.7": "USD", "glm-5": "CNY"}

    daily = costs(engine, Filters(NOV_START, DEC_START), period="day", by=["model"], zone="Asia/Tokyo", catalog=catalog)

    assert list(daily.columns) == cost_columns(["model"])
    assert len(daily) == 60
    for row in daily.to_dict("records"):
        key = (row["period"], row["model"])
        cur = currency[row["model"]]
        assert row[f"billed_{cur.lower()}"] == native[key]
        want_jpy = native[key] * rate_on(row["period"], cur)
        assert row["jpy"].quantize(Decimal(1)) == want_jpy.quantize(Decimal(1)), key
        want_usd = (
            native[key] if cur == "USD" else native[key] * rate_on(row["period"], "CNY") / rate_on(row["period"], "USD")
        )
        assert row["usd"].quantize(Decimal("0.01")) == want_usd.quantize(Decimal("0.01")), key
        want_saved = savings[key] * rate_on(row["period"], cur)
        assert row["cache_savings_jpy"].quantize(Decimal(1)) == want_saved.quantize(Decimal(1)), key
        assert row["usd_jpy"] == rate_on(row["period"], "USD")
        assert row["fx_day"] == (RATE_CHANGE if row["period"] >= RATE_CHANGE else date(2026, 11, 1))
        assert "USDJPY" in row["fx_rates"] and "manual" in row["fx_rates"]

    monthly = costs(engine, Filters(NOV_START, DEC_START), period="month", by=["provider", "model"], catalog=catalog)
    assert monthly["period"].tolist() == [date(2026, 11, 1)] * 2
    for row in monthly.to_dict("records"):
        cur = currency[row["model"]]
        want = sum(
            (v * rate_on(d, cur) for (d, m), v in native.items() if m == row["model"]),
            Decimal(0),
        )
        assert row["jpy"].quantize(Decimal(1)) == want.quantize(Decimal(1))
        assert row["usd_jpy"] is None  # two rates in the month
        assert row["fx_day"] == RATE_CHANGE
        assert row["requests"] == sum(1 for e in events if e.model == row["model"])
        want_ratio = sum(e.usage.cached_input_tokens or 0 for e in events if e.model == row["model"]) / sum(
            e.usage.input_tokens or 0 for e in events if e.model == row["model"]
        )
        assert row["cache_hit_ratio"] == pytest.approx(want_ratio)

    by_app = costs(engine, Filters(NOV_START, DEC_START), period="total", by=["app"], catalog=catalog)
    assert sorted(by_app["app"]) == ["chatbot", "crm"]
    assert sum(by_app["jpy"]) == sum(monthly["jpy"])


def test_cost_days_follow_the_display_zone_including_dst(engine):
    def spend(ts: datetime) -> UsageEvent:
        return UsageEvent(
            ts=ts,
            source="transport",
            provider="zai",
            model="glm-4.7",
            vantage="tokyo",
            outcome=Outcome.OK,
            usage=Usage(input_tokens=1, output_tokens=1),
            cost=Cost(Decimal("1"), "USD"),
        )

    utc = [
        datetime(2026, 11, 1, 3, 30, tzinfo=UTC),  # 23:30 EDT Oct 31, 12:30 JST Nov 1
        datetime(2026, 11, 1, 4, 30, tzinfo=UTC),  # 00:30 EDT Nov 1
        datetime(2026, 11, 1, 14, 59, tzinfo=UTC),  # 23:59 JST Nov 1
        datetime(2026, 11, 1, 15, 0, tzinfo=UTC),  # 00:00 JST Nov 2
        datetime(2026, 11, 2, 4, 30, tzinfo=UTC),  # 23:30 EST Nov 1 (clocks went back at 06:00 UTC)
        datetime(2026, 11, 2, 5, 30, tzinfo=UTC),  # 00:30 EST Nov 2
    ]
    write_events(engine, [spend(t) for t in utc])
    refresh(engine, datetime(2026, 11, 3, tzinfo=UTC))
    window = Filters(datetime(2026, 10, 31, tzinfo=UTC), datetime(2026, 11, 3, tzinfo=UTC))

    tokyo = costs(engine, window, by=[], zone="Asia/Tokyo")
    new_york = costs(engine, window, by=[], zone="America/New_York")

    assert dict(zip(tokyo["period"], tokyo["requests"], strict=True)) == {date(2026, 11, 1): 3, date(2026, 11, 2): 3}
    assert dict(zip(new_york["period"], new_york["requests"], strict=True)) == {
        date(2026, 10, 31): 1,
        date(2026, 11, 1): 4,
        date(2026, 11, 2): 1,
    }
    # With no stored rate, the defaults are used and say so.
    assert tokyo["usd_jpy"].tolist() == [Decimal(150), Decimal(150)]
    assert tokyo["fx_day"].isna().all()
    assert "default" in tokyo["fx_rates"].iloc[0]
    assert tokyo["jpy"].tolist() == [Decimal(450), Decimal(450)]


def test_month_to_date_and_forecast(engine):
    now = datetime(2026, 11, 10, 12, 0, tzinfo=JST)
    hourly_spend = Decimal("0.01")
    events = []
    t = NOV_START - timedelta(days=3) + timedelta(minutes=30)
    while t < now:
        events.append(
            UsageEvent(
                ts=t.astimezone(UTC),
                source="proxy",
                provider="zai",
                model="glm-4.7",
                vantage="tokyo",
                outcome=Outcome.OK,
                cost=Cost(hourly_spend, "USD"),
            )
        )
        t += timedelta(hours=1)
    write_events(engine, events)
    refresh(engine, now)

    forecast = spend_forecast(engine, now=now, zone="Asia/Tokyo")

    assert forecast.has_data
    assert forecast.month == date(2026, 11, 1)
    hours_so_far = 9 * 24 + 12  # Nov 1 00:00 to Nov 10 12:00 Tokyo
    assert forecast.month_to_date == hours_so_far * hourly_spend * 150
    assert forecast.last_7_days == 168 * hourly_spend * 150
    assert forecast.daily_average == 24 * hourly_spend * 150
    assert forecast.days_remaining == Decimal("20.5")
    assert forecast.forecast == forecast.month_to_date + Decimal("36") * Decimal("20.5")
    assert "last 7" in forecast.method and "JPY" in forecast.method

    usd = spend_forecast(engine, now=now, zone="Asia/Tokyo", currency="USD")
    assert usd.month_to_date == hours_so_far * hourly_spend
    other = spend_forecast(engine, Filters(now, now, providers=["bigmodel"]), now=now)
    assert not other.has_data and other.forecast == 0


def test_cache_savings_use_the_price_of_each_utc_day_in_any_display_zone(engine):
    """A local day spans parts of two UTC days (the one before it east of UTC, the one after it west of UTC);
    each cached token saves what the price of its own UTC day says, whether the day is read from the daily
    rollups (Tokyo and New York kept) or from the hourly ones (Los Angeles)."""
    catalog = reference_catalog()  # zai glm-4.7 saves 0.49 USD per million cached tokens, 0.65 from PRICE_CHANGE
    change = datetime.combine(PRICE_CHANGE, datetime.min.time(), UTC)
    cached = {  # UTC time -> cached tokens
        change - timedelta(hours=10): 4_000_000,  # old price: 1.96
        change - timedelta(hours=4): 1_000_000,  # old price: 0.49
        change + timedelta(hours=2): 2_000_000,  # new price: 1.30
        change + timedelta(hours=16): 3_000_000,  # new price: 1.95
    }
    events = []
    for ts, tokens in cached.items():
        usage = Usage(input_tokens=tokens, cached_input_tokens=tokens, output_tokens=10)
        events.append(
            UsageEvent(
                ts=ts,
                source="proxy",
                provider="zai",
                model="glm-4.7",
                vantage="tokyo",
                outcome=Outcome.OK,
                usage=usage,
                cost=catalog.price("zai", "glm-4.7", usage, ts),
            )
        )
    write_events(engine, events)
    refresh_rollups(engine, now=change + timedelta(days=3), day_zones=(*DEFAULT_DAY_ZONES, "America/New_York"))
    window = Filters(change - timedelta(days=2), change + timedelta(days=3))
    nov = partial(date, 2026, 11)
    want = {
        "Asia/Tokyo": {nov(15): "1.96", nov(16): "1.79", nov(17): "1.95"},  # 23:00 | 05:00, 11:00 | 01:00
        "UTC": {nov(15): "2.45", nov(16): "3.25"},
        "America/New_York": {nov(15): "3.75", nov(16): "1.95"},  # 09:00, 15:00, 21:00 | 11:00
        "America/Los_Angeles": {nov(15): "3.75", nov(16): "1.95"},  # 06:00, 12:00, 18:00 | 08:00
    }
    for zone, days in want.items():
        daily = costs(engine, window, by=["model"], zone=zone, catalog=catalog)
        got = dict(zip(daily["period"], daily["cache_savings_usd"], strict=True))
        assert got == {day: Decimal(amount) for day, amount in days.items()}, zone
        rate = Decimal(150)  # the default USDJPY: no rate stored
        assert daily["cache_savings_jpy"].tolist() == [Decimal(a) * rate for a in days.values()], zone
        assert sum(daily["cache_savings_usd"]) == Decimal("5.70")  # every token counted once


# --- empty database ------------------------------------------------------------------------------------------


def test_every_function_answers_on_an_empty_database(engine):
    now = datetime(2026, 11, 20, tzinfo=UTC)
    week = Filters.last(timedelta(days=7), now=now)
    refresh(engine, now)

    frames = {
        "latency": (latency_percentiles(engine, week), LATENCY_COLUMNS),
        "latency_day": (latency_percentiles(engine, week, granularity="day"), LATENCY_COLUMNS),
        "profile": (latency_profile(engine, week), PROFILE_COLUMNS),
        "peak": (peak_slowdown(engine, now=now), PEAK_COLUMNS),
        "compare": (compare_providers(engine, week), COMPARE_COLUMNS),
        "costs": (costs(engine, week), cost_columns(["provider", "model"])),
        "costs_month": (costs(engine, week, period="month", by=["app"]), cost_columns(["app"])),
        "rates_probe": (
            throttle_rates(engine, week),
            [
                "period",
                "provider",
                "model",
                "source",
                "requests",
                "ok",
                "throttled",
                "http_429",
                "rate_429",
                "throttled_rate",
                "retry_after_mean_s",
                "retry_after_max_s",
            ],
        ),
        "rates_real": (
            throttle_rates(engine, week, traffic="real", granularity=None, by=["app"]),
            [
                "app",
                "source",
                "requests",
                "ok",
                "throttled",
                "http_429",
                "rate_429",
                "throttled_rate",
                "retry_after_mean_s",
                "retry_after_max_s",
            ],
        ),
        "codes": (
            outcome_breakdown(engine, week, granularity="day"),
            ["period", "provider", "model", "source", "outcome", "error_code", "requests", "http_429", "share"],
        ),
    }
    for name, (frame, columns) in frames.items():
        assert isinstance(frame, pd.DataFrame), name
        assert frame.empty, name
        assert list(frame.columns) == list(columns), name
    assert health(engine, now=now) == []
    forecast = spend_forecast(engine, now=now)
    assert not forecast.has_data
    assert forecast.month_to_date == forecast.forecast == 0


def test_filter_lists_name_every_target_and_app_from_the_days_or_the_hours(engine):
    now = datetime(2026, 11, 20, 6, 0, tzinfo=UTC)
    old = now - timedelta(days=60)
    probe = partial(ProbeResult, outcome=Outcome.OK, http_status=200, ttft_ms=300.0)
    real = partial(UsageEvent, outcome=Outcome.OK, http_status=200)
    write_events(
        engine,
        [
            probe(ts=old, provider="zai", model="glm-4.7", vantage="tokyo"),
            probe(ts=now - timedelta(hours=2), provider="openrouter", model="z-ai/glm-4.7", vantage="frankfurt"),
            real(ts=old, source="transport", provider="bigmodel", model="glm-4.6", vantage="tokyo", app="coder"),
            real(ts=now - timedelta(hours=1), source="proxy", provider="zai", model="glm-4.7", vantage="osaka"),
            # What the probes record in the usage table too: no app, and nothing a filter list lacks.
            real(ts=now - timedelta(hours=1), source="probe", provider="dashscope", model="glm-4.5", vantage="x"),
        ],
    )
    expected = {
        "providers": ("bigmodel", "openrouter", "zai"),
        "models": ("glm-4.6", "glm-4.7", "z-ai/glm-4.7"),
        "vantages": ("frankfurt", "osaka", "tokyo"),
        "apps": ("coder",),
    }

    assert refresh_rollups(engine, now=now, day_zones=()).skipped is None  # no daily rollups: read the hours
    found = dimensions(engine)
    assert {name: getattr(found, name) for name in expected} == expected

    refresh(engine, now)  # daily rollups kept: read the days, same lists
    found = dimensions(engine)
    assert {name: getattr(found, name) for name in expected} == expected


def test_filter_lists_are_empty_on_an_empty_database(engine):
    refresh(engine, datetime(2026, 11, 20, tzinfo=UTC))
    found = dimensions(engine)
    assert (found.providers, found.models, found.vantages, found.apps) == ((), (), (), ())


def test_filters_refuse_naive_times_and_reversed_ranges():
    with pytest.raises(ValueError, match="aware"):
        Filters(datetime(2026, 1, 1), datetime(2026, 1, 2, tzinfo=UTC))
    with pytest.raises(ValueError, match="before start"):
        Filters(datetime(2026, 1, 2, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC))
    f = Filters(datetime(2026, 1, 1, 9, tzinfo=JST), datetime(2026, 1, 2, tzinfo=UTC), providers="zai")
    assert f.providers == ("zai",) and f.start == datetime(2026, 1, 1, tzinfo=UTC)
    assert hash(f) == hash(Filters(datetime(2026, 1, 1, tzinfo=UTC), f.end, providers=["zai"]))


def test_both_ways_of_reading_quantiles_agree_and_stay_in_the_exact_values_bucket():
    from monitor.analytics import _hist
    from monitor.rollup import BUCKET_RATIO, bucket_of

    rng = np.random.default_rng(4)
    n_groups = 40
    values = [
        rng.lognormal(np.log(rng.uniform(50, 5000)), rng.uniform(0.1, 1.5), rng.integers(1, 300))
        for _ in range(n_groups)
    ]
    groups, buckets = [], []
    for g, vs in enumerate(values):
        for v in vs:
            groups.append(g)
            buckets.append(bucket_of(float(v)))
    g = np.array(groups, dtype=np.int64)
    b = np.array(buckets, dtype=np.int64)
    c = np.ones(len(g), dtype=np.int64)
    qs = (0.01, 0.5, 0.95, 0.99, 1.0)
    dense = np.full((len(qs), n_groups + 1), np.nan)
    sparse = np.full((len(qs), n_groups + 1), np.nan)
    low = int(b.min())
    _hist._dense_quantiles(dense, g, b - low, c, n_groups + 1, int(b.max()) - low + 1, low, qs)
    _hist._sparse_quantiles(sparse, g, b, c, n_groups + 1, qs)

    assert np.allclose(dense, sparse, equal_nan=True)
    assert np.isnan(dense[:, n_groups]).all()  # a group without values
    for gi, vs in enumerate(values):
        for qi, q in enumerate(qs):
            exact = np.quantile(vs, q, method="inverted_cdf")
            assert 1 / BUCKET_RATIO <= dense[qi, gi] / exact <= BUCKET_RATIO * (1 + 1e-9)


def test_latest_probes_are_the_newest_first_with_their_errors_and_selections(engine):
    from monitor.analytics import PROBE_COLUMNS, latest_probes

    day = datetime(2026, 11, 3, tzinfo=UTC)
    write_events(engine, [e for e in traffic_day(day) if isinstance(e, ProbeResult)])
    everything = Filters(day, day + timedelta(days=1))
    rows = latest_probes(engine, everything, limit=50)
    assert list(rows.columns) == list(PROBE_COLUMNS) and len(rows) == 50
    assert rows["ts"].is_monotonic_decreasing
    assert rows["ts"].iloc[0] == pd.Timestamp(day + timedelta(minutes=24 * 60 - 6))
    throttled = latest_probes(engine, everything, outcomes=["rate_limited"])
    assert len(throttled) == 24  # one an hour
    assert set(throttled["error_code"]) == {"1302"} and set(throttled["http_status"]) == {429}
    assert latest_probes(engine, Filters(day, day + timedelta(days=1), providers=("openrouter",))).empty
    assert latest_probes(engine, Filters(day - timedelta(days=2), day)).empty
