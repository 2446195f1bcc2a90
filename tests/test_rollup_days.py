"""Daily rollups per zone: whatever mix of daily and hourly rows a call reads, its answer is the hourly one."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from sqlalchemy import Connection, Engine, delete, func, select

from monitor.analytics import (
    Filters,
    compare_providers,
    costs,
    latency_percentiles,
    outcome_breakdown,
    spend_forecast,
    throttle_rates,
)
from monitor.analytics._days import split_days
from monitor.events import ProbeResult, UsageEvent
from monitor.models import ProbeDailyRow, RollupZoneRow, UsageDailyRow, UsageHourlyRow
from monitor.money import Cost, Currency
from monitor.outcomes import Outcome
from monitor.rollup import refresh_rollups
from monitor.rollup_days import DEFAULT_DAY_ZONES, day_hours, kept_zones
from monitor.usage import Usage
from monitor.writer import write_events

# Ten days around the end of US daylight saving time (2026-11-01), so New York has a 25-hour day.
START = datetime(2026, 10, 27, 5, 17, tzinfo=UTC)
END = datetime(2026, 11, 6, 19, 43, tzinfo=UTC)
NOW = END + timedelta(hours=1)
NEW_YORK = "America/New_York"
KOLKATA = "Asia/Kolkata"  # UTC+5:30: hours count in the local day they start in
TARGETS: tuple[tuple[str, str, Currency], ...] = (
    ("zai", "glm-4.7", "USD"),
    ("openrouter", "z-ai/glm-4.7", "USD"),
    ("dashscope", "qwen-plus", "CNY"),
)
OUTCOMES = (
    (Outcome.OK, 200, None),
    (Outcome.OK, 200, None),
    (Outcome.OK, 200, None),
    (Outcome.RATE_LIMITED, 429, "1302"),
    (Outcome.OVERLOADED, 429, "1305"),
    (Outcome.SERVER_ERROR, 500, "500"),
)


def history(start: datetime, end: datetime, seed: int) -> list[ProbeResult | UsageEvent]:
    """Probes every 20 minutes per target and vantage, and real traffic at random times, priced in USD or CNY."""
    rng = random.Random(seed)
    events: list[ProbeResult | UsageEvent] = []
    t = start
    while t < end:
        for provider, model, _ in TARGETS:
            for vantage in ("tokyo", "singapore"):
                outcome, status, code = rng.choice(OUTCOMES)
                ok = outcome == Outcome.OK
                events.append(
                    ProbeResult(
                        ts=t + timedelta(seconds=rng.uniform(0, 60)),
                        provider=provider,
                        model=model,
                        vantage=vantage,
                        outcome=outcome,
                        http_status=status,
                        error_code=code,
                        retry_after_s=float(rng.randint(1, 30)) if status == 429 else None,
                        ttft_ms=rng.lognormvariate(6, 0.5) if ok else None,
                        total_ms=rng.lognormvariate(7.5, 0.4),
                        tokens_per_s=rng.lognormvariate(4, 0.3) if ok else None,
                    )
                )
        t += timedelta(minutes=20)
    seconds = (end - start).total_seconds()
    for _ in range(3_000):
        provider, model, currency = rng.choice(TARGETS)
        outcome, status, code = rng.choice(OUTCOMES)
        ts = start + timedelta(seconds=rng.uniform(0, seconds))
        n = rng.randint(100, 50_000)
        usage = Usage(input_tokens=n, cached_input_tokens=rng.randint(0, n // 2), output_tokens=rng.randint(1, 900))
        ok = outcome == Outcome.OK
        events.append(
            UsageEvent(
                ts=ts,
                source=rng.choice(["proxy", "transport"]),
                provider=provider,
                model=model,
                vantage="tokyo",
                app=rng.choice(["crm", "chatbot", None]),
                outcome=outcome,
                http_status=status,
                error_code=code,
                usage=usage if ok else Usage(),
                cost=Cost(Decimal(f"0.{rng.randint(1, 999_999):06d}"), currency) if ok else None,
            )
        )
    return events


Call = Callable[[Connection], Any]


def calls(zone: str, start: datetime, end: datetime) -> dict[str, Call]:
    """The analytics calls that can read daily rows, over [start, end) in ``zone``."""
    f = Filters(start, end)
    real = Filters(start, end, apps=("crm", ""), sources=("proxy",))
    return {
        "latency by day": lambda c: latency_percentiles(c, f, granularity="day", zone=zone),
        "latency by day, one provider": lambda c: latency_percentiles(
            c, Filters(start, end, providers=("zai",)), granularity="day", zone=zone, by=("provider",)
        ),
        "compare": lambda c: compare_providers(c, f),
        "probe 429s by day": lambda c: throttle_rates(c, f, granularity="day", zone=zone),
        "probe 429s in total": lambda c: throttle_rates(c, f, granularity=None, zone=zone),
        "real 429s by day": lambda c: throttle_rates(c, real, traffic="real", granularity="day", zone=zone),
        "real 429s in total": lambda c: throttle_rates(c, f, traffic="real", granularity=None, by=("app",)),
        "probe codes by day": lambda c: outcome_breakdown(c, f, granularity="day", zone=zone),
        "real codes in total": lambda c: outcome_breakdown(c, f, traffic="real", granularity=None),
        "costs by day": lambda c: costs(c, f, period="day", by=("provider", "model", "app"), zone=zone),
        "costs by month": lambda c: costs(c, f, period="month", by=("source",), zone=zone),
        "costs in total": lambda c: costs(c, real, period="total", by=(), zone=zone),
        "forecast": lambda c: spend_forecast(c, now=end, zone=zone, currency="USD"),
    }


def answers(conn: Connection, zone: str, start: datetime, end: datetime) -> dict[str, Any]:
    out = {}
    for name, call in calls(zone, start, end).items():
        value = call(conn)
        if isinstance(value, pd.DataFrame):
            value = value.sort_values(list(value.columns[:-1])[:6], kind="stable").reset_index(drop=True)
        out[name] = value
    return out


def hourly_answers(engine: Engine, zone: str, start: datetime, end: datetime) -> dict[str, Any]:
    """The same calls with no zone kept (so they read hours only), in a transaction that is rolled back."""
    with engine.connect() as conn, conn.begin() as txn:
        conn.execute(delete(RollupZoneRow))
        assert kept_zones(conn) == []
        out = answers(conn, zone, start, end)
        txn.rollback()
    return out


def assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    for name, expected in want.items():
        actual = got[name]
        if isinstance(expected, pd.DataFrame):
            assert not expected.empty, name  # the comparison must compare something
            pd.testing.assert_frame_equal(actual, expected, check_dtype=False, obj=name)
        else:
            assert actual == expected, name


@pytest.fixture
def seeded(engine: Engine) -> Engine:
    write_events(engine, history(START, END, seed=1))
    return engine


@pytest.mark.parametrize("zone", ["Asia/Tokyo", "UTC", NEW_YORK, KOLKATA])
def test_daily_rollups_give_the_hourly_answers_in_every_zone(seeded: Engine, zone: str) -> None:
    refresh_rollups(seeded, now=NOW, day_zones=(*DEFAULT_DAY_ZONES, NEW_YORK, KOLKATA))
    with seeded.connect() as conn:
        assert set(kept_zones(conn)) == {*DEFAULT_DAY_ZONES, NEW_YORK, KOLKATA}
        assert conn.execute(select(func.count()).select_from(ProbeDailyRow)).scalar_one() > 0
        split = split_days(conn, Filters(START, END), ZoneInfo(zone))  # the calls below do read whole days
        assert split.zone == ZoneInfo(zone) and split.first is not None and split.last is not None
        assert (split.last - split.first).days >= 7 and len(split.hours) == 2
    # Ranges that start and end mid-day (partial days from hours), on day edges, and inside one day.
    tz = ZoneInfo(zone)
    first_day = START.astimezone(tz).date() + timedelta(days=1)
    edges = (day_hours(tz, first_day)[0], day_hours(tz, first_day + timedelta(days=5))[0])
    for start, end in ((START, END), edges, (START + timedelta(hours=30), START + timedelta(hours=40))):
        with seeded.connect() as conn:
            got = answers(conn, zone, start, end)
        assert_same(got, hourly_answers(seeded, zone, start, end))


def test_each_day_holds_the_sum_of_its_hours(seeded: Engine) -> None:
    refresh_rollups(seeded, now=NOW, day_zones=(NEW_YORK,))
    tz = ZoneInfo(NEW_YORK)
    with seeded.connect() as conn:
        days = conn.execute(
            select(UsageDailyRow.day, func.sum(UsageDailyRow.requests), func.sum(UsageDailyRow.cost_usd_e10))
            .where(UsageDailyRow.zone == NEW_YORK)
            .group_by(UsageDailyRow.day)
        ).all()
        assert len(days) >= 10
        long_day = [d for d in days if d[0] == date(2026, 11, 1)]
        assert long_day and day_hours(tz, date(2026, 11, 1))[1] - day_hours(tz, date(2026, 11, 1))[0] == timedelta(
            hours=25
        )
        for day, requests, cost in days:
            first, end = day_hours(tz, day)
            hours = conn.execute(
                select(func.sum(UsageHourlyRow.requests), func.sum(UsageHourlyRow.cost_usd_e10)).where(
                    UsageHourlyRow.hour >= first, UsageHourlyRow.hour < end
                )
            ).one()
            assert (int(requests), int(cost)) == (int(hours[0]), int(hours[1])), day


def test_late_events_update_their_days(seeded: Engine) -> None:
    refresh_rollups(seeded, now=NOW)
    # A spool replay brings a day of old events after the refresh: their days must follow their hours.
    late_start = START + timedelta(days=3)
    write_events(seeded, history(late_start, late_start + timedelta(days=1), seed=2))
    with seeded.connect() as conn:
        stale = answers(conn, "Asia/Tokyo", START, END)
    refresh_rollups(seeded, now=NOW + timedelta(minutes=1))
    with seeded.connect() as conn:
        fresh = answers(conn, "Asia/Tokyo", START, END)
    want = hourly_answers(seeded, "Asia/Tokyo", START, END)
    assert_same(fresh, want)
    assert not stale["costs by day"].equals(want["costs by day"])  # the late rows did change the answer


def test_a_zone_asked_for_later_is_built_from_the_hours_and_kept_by_every_refresher(seeded: Engine) -> None:
    refresh_rollups(seeded, now=NOW, day_zones=("UTC",))
    with seeded.connect() as conn:
        assert kept_zones(conn) == ["UTC"]
    refresh_rollups(seeded, now=NOW, day_zones=(NEW_YORK,))
    with seeded.connect() as conn:
        assert kept_zones(conn) == [NEW_YORK, "UTC"]
        assert_same(answers(conn, NEW_YORK, START, END), hourly_answers(seeded, NEW_YORK, START, END))
    # A refresher that asks only for UTC still keeps New York's days in step with new hours.
    write_events(seeded, history(END - timedelta(days=2), END, seed=3))
    refresh_rollups(seeded, now=NOW + timedelta(minutes=1), day_zones=("UTC",))
    with seeded.connect() as conn:
        assert_same(answers(conn, NEW_YORK, START, END), hourly_answers(seeded, NEW_YORK, START, END))


def test_an_unknown_zone_is_refused_before_anything_is_written(engine: Engine) -> None:
    with pytest.raises(Exception, match="Mars/Olympus"):
        refresh_rollups(engine, now=NOW, day_zones=("Mars/Olympus",))
    with engine.connect() as conn:
        assert kept_zones(conn) == []
