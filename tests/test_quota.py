"""Quota burn on real SQLite and Postgres: steady synthetic usage written with write_events must give the used
amount, burn rate, exhaustion time and reset a user would work out by hand."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from monitor.config import Settings, settings_from_dict
from monitor.events import UsageEvent
from monitor.fx import store_rates
from monitor.money import Cost
from monitor.outcomes import Outcome
from monitor.quota import QuotaStatus, quota_statuses
from monitor.rollup import prune_raw, refresh_rollups
from monitor.usage import Usage
from monitor.writer import write_events

CST = ZoneInfo("Asia/Shanghai")
JST = ZoneInfo("Asia/Tokyo")
MINUTE = timedelta(minutes=1)


def ev(ts: datetime, provider: str = "zai", model: str = "glm-4.7-flash", **kw: Any) -> UsageEvent:
    fields: dict[str, Any] = dict(
        ts=ts, source="proxy", provider=provider, model=model, vantage="test", outcome=Outcome.OK
    )
    fields.update(kw)
    return UsageEvent(**fields)


def every(start: datetime, end: datetime, step: timedelta) -> Iterator[datetime]:
    t = start
    while t < end:
        yield t
        t += step


def settings(*plans: dict[str, Any], **extra: Any) -> Settings:
    return settings_from_dict({"plans": list(plans), **extra})


def only(statuses: list[QuotaStatus], window: str) -> QuotaStatus:
    found = [s for s in statuses if s.window == window]
    assert len(found) == 1, [s.window for s in statuses]
    return found[0]


def close(a: datetime | None, b: datetime, within: timedelta = MINUTE) -> bool:
    return a is not None and abs(a - b) < within


# ---------------------------------------------------------------------------------------------------------
# Free tier


def test_free_tier_daily_cap_runs_out_at_the_steady_rate(engine) -> None:
    now = datetime(2026, 11, 24, 10, 0, tzinfo=CST)
    midnight = datetime(2026, 11, 24, 0, 0, tzinfo=CST)
    # One request a minute since 08:00 Beijing time (120 today), and an hour of traffic last night.
    today = [ev(t) for t in every(datetime(2026, 11, 24, 8, 0, 30, tzinfo=CST), now, MINUTE)]
    last_night = [ev(t) for t in every(midnight - timedelta(hours=1), midnight, MINUTE)]
    # Refused requests use no quota; other providers' requests are not this plan's.
    refused = [ev(now - timedelta(minutes=m, seconds=10), outcome=Outcome.RATE_LIMITED) for m in range(30)]
    elsewhere = [ev(now - timedelta(minutes=m, seconds=20), provider="bigmodel") for m in range(30)]
    write_events(engine, today + last_night + refused + elsewhere)
    plan = {"kind": "free_tier", "name": "flash", "provider": "zai", "requests_per_day": 250, "requests_per_minute": 20}

    statuses = quota_statuses(engine, settings(plan), now=now)

    day = only(statuses, "day")
    assert (day.used, day.limit, day.unit) == (Decimal(120), Decimal(250), "requests")
    assert day.share == 120 / 250
    assert day.burn_per_hour == Decimal(60)
    # 130 requests left at 60 an hour: 2 h 10 min.
    assert close(day.exhausts_at, datetime(2026, 11, 24, 12, 10, tzinfo=CST))
    assert day.resets_at == datetime(2026, 11, 25, 0, 0, tzinfo=CST)
    assert day.runs_out_before_reset
    assert day.source == "estimate" and day.as_of == now and day.kind == "free_tier" and day.plan == "flash"

    minute = only(statuses, "minute")
    assert minute.used == 1 and minute.limit == 20 and not minute.runs_out_before_reset
    assert minute.resets_at == datetime(2026, 11, 24, 10, 0, 30, tzinfo=CST)


def test_free_tier_daily_cap_that_lasts_until_midnight(engine) -> None:
    now = datetime(2026, 11, 24, 20, 0, tzinfo=CST)
    write_events(engine, [ev(t) for t in every(now - timedelta(minutes=117), now, timedelta(minutes=6))])
    plan = {"kind": "free_tier", "name": "flash", "provider": "zai", "requests_per_day": 250}

    day = only(quota_statuses(engine, settings(plan), now=now), "day")

    assert day.used == 20 and day.burn_per_hour == 10
    assert close(day.exhausts_at, now + timedelta(hours=23))  # 230 left at 10 an hour
    assert not day.runs_out_before_reset


def test_free_tier_counts_only_the_models_of_the_targets_on_the_plan(engine) -> None:
    now = datetime(2026, 11, 24, 10, 0, tzinfo=CST)
    flash = [ev(t, model="glm-4.7-flash") for t in every(now - timedelta(hours=1), now, MINUTE)]
    paid = [ev(t + timedelta(seconds=1), model="glm-4.7") for t in every(now - timedelta(hours=1), now, MINUTE)]
    write_events(engine, flash + paid)
    plan = {"kind": "free_tier", "name": "flash", "provider": "zai", "requests_per_day": 1000}
    target = {"provider": "zai", "model": "glm-4.7-flash", "plan": "flash"}

    day = only(quota_statuses(engine, settings(plan, targets=[target]), now=now), "day")
    assert day.used == 60
    everything = only(quota_statuses(engine, settings(plan), now=now), "day")
    assert everything.used == 120
    named = only(quota_statuses(engine, settings(plan | {"models": ["glm-4.7-flash"]}), now=now), "day")
    assert named.used == 60


def test_free_tier_five_hour_window_starts_at_the_first_request(engine) -> None:
    now = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    # A burst two days ago, then requests every 10 minutes from 08:00:30: the window opened at 08:00:30.
    old = [ev(now - timedelta(days=2, minutes=m)) for m in range(5)]
    recent = [ev(t) for t in every(datetime(2026, 11, 24, 8, 0, 30, tzinfo=UTC), now, timedelta(minutes=10))]
    write_events(engine, old + recent)
    plan = {"kind": "free_tier", "name": "f", "provider": "zai", "requests_per_5h": 40}

    five = only(quota_statuses(engine, settings(plan), now=now), "5 hours")

    assert five.used == 12 and five.burn_per_hour == 6
    assert five.resets_at == datetime(2026, 11, 24, 13, 0, 30, tzinfo=UTC)
    assert close(five.exhausts_at, now + timedelta(hours=4, minutes=40))  # 28 left at 6 an hour
    assert not five.runs_out_before_reset

    tighter = only(quota_statuses(engine, settings({**plan, "requests_per_5h": 30}), now=now), "5 hours")
    assert close(tighter.exhausts_at, now + timedelta(hours=3))  # 18 left: at 13:00, before 13:00:30
    assert tighter.runs_out_before_reset


# ---------------------------------------------------------------------------------------------------------
# Prepaid balance and monthly budget


def test_prepaid_balance_runs_out_at_the_steady_spend(engine) -> None:
    now = datetime(2026, 11, 24, 12, 0, tzinfo=JST)
    # USD 0.01 every 10 minutes (USD 0.06 an hour), from a day before the balance was read.
    events = [
        ev(t, model="glm-4.7", cost=Cost(Decimal("0.01"), "USD"))
        for t in every(datetime(2026, 11, 19, 0, 5, tzinfo=JST), now, timedelta(minutes=10))
    ]
    write_events(engine, events)
    plan = {
        "kind": "prepaid",
        "name": "zai-balance",
        "provider": "zai",
        "balance": "10",
        "currency": "USD",
        "as_of": "2026-11-20",
        "topups": [
            {"date": "2026-11-22", "amount": "5"},
            {"date": "2026-11-18", "amount": "100"},  # before as_of: already in the balance
            {"date": "2026-12-24", "amount": "100"},  # not yet
        ],
    }

    (status,) = quota_statuses(engine, settings(plan), now=now)

    # 108 hours since 2026-11-20 00:00 JST at USD 0.06 an hour.
    assert status.kind == "prepaid" and status.unit == "USD"
    assert status.used == Decimal("6.48") and status.limit == Decimal(15)
    assert status.burn_per_hour == Decimal("0.06")
    assert close(status.exhausts_at, now + timedelta(hours=142))  # USD 8.52 left at 0.06 an hour
    assert status.resets_at is None and status.runs_out_before_reset
    assert any("not counted yet" in n for n in status.notes)


def test_prepaid_balance_keeps_counting_usage_whose_raw_rows_were_pruned(engine) -> None:
    now = datetime(2026, 11, 24, 12, 0, tzinfo=JST)
    events = [
        ev(t, model="glm-4.7", cost=Cost(Decimal("0.5"), "USD"))
        for t in every(datetime(2026, 7, 20, 0, 30, tzinfo=JST), now, timedelta(hours=12))
    ]
    write_events(engine, events)
    plan = {
        "kind": "prepaid",
        "name": "p",
        "provider": "zai",
        "balance": "1000",
        "currency": "USD",
        "as_of": "2026-08-01",
    }
    since = datetime(2026, 8, 1, tzinfo=JST)
    expected = Decimal("0.5") * sum(1 for e in events if e.ts >= since)

    (before,) = quota_statuses(engine, settings(plan), now=now)
    report = prune_raw(engine, retention_days=30, now=now)  # rolls up, then deletes raw rows older than 30 days
    (after,) = quota_statuses(engine, settings(plan), now=now)

    assert sum(report.deleted.values()) > 0
    assert before.used == after.used == expected
    assert before.burn_per_hour == after.burn_per_hour is not None
    assert abs(after.burn_per_hour - Decimal(1) / 24) < Decimal("1e-9")  # USD 1 a day
    assert before.exhausts_at == after.exhausts_at


def test_monthly_budget_converts_each_day_at_that_days_rate(engine) -> None:
    store_rates(engine, date(2026, 11, 1), {"USD": Decimal(150), "CNY": Decimal(21)}, source="manual")
    store_rates(engine, date(2026, 11, 10), {"USD": Decimal(155), "CNY": Decimal(22)}, source="manual")
    now = datetime(2026, 11, 20, 12, 0, tzinfo=JST)
    start = datetime(2026, 10, 25, 0, 5, tzinfo=JST)  # October's spend belongs to October's budget
    step = timedelta(minutes=10)
    usd = [ev(t, model="glm-4.7", cost=Cost(Decimal("0.02"), "USD")) for t in every(start, now, step)]
    cny = [
        ev(t + timedelta(minutes=1), provider="bigmodel", model="glm-4.7", cost=Cost(Decimal("0.1"), "CNY"))
        for t in every(start, now, step)
    ]
    unpriced = [
        ev(
            now - timedelta(minutes=3), provider="bigmodel", model="glm-x", usage=Usage(input_tokens=5, output_tokens=1)
        ),
        ev(now - timedelta(minutes=4), provider="bigmodel", model="glm-4.7", outcome=Outcome.RATE_LIMITED),
    ]
    write_events(engine, usd + cny + unpriced)
    plan = {"kind": "monthly_budget", "name": "team", "amount": "20000", "currency": "JPY"}

    (status,) = quota_statuses(engine, settings(plan), now=now)

    # Nov 1-9: 216 h at 0.12 USD x 150 + 0.6 CNY x 21 = 30.6 JPY/h; Nov 10 - 20 12:00: 252 h at 31.8 JPY/h.
    expected_used = Decimal(216) * Decimal("30.6") + Decimal(252) * Decimal("31.8")
    assert status.unit == "JPY" and status.window == "month"
    assert abs(status.used - expected_used) < Decimal("0.000001")
    assert status.burn_per_hour is not None and abs(status.burn_per_hour - Decimal("31.8")) < Decimal("0.000001")
    hours_left = (Decimal(20000) - expected_used) / Decimal("31.8")
    assert close(status.exhausts_at, now + timedelta(hours=float(hours_left)))
    assert status.resets_at == datetime(2026, 12, 1, 0, 0, tzinfo=JST)
    assert status.runs_out_before_reset
    assert any("USDJPY 155 (2026-11-10, manual)" in n for n in status.notes)
    assert any("1 requests reported usage but had no price" in n for n in status.notes)

    only_zai = {**plan, "name": "zai-only", "providers": ["zai"]}
    (zai,) = quota_statuses(engine, settings(only_zai), now=now)
    assert zai.used == Decimal(216) * Decimal(18) + Decimal(252) * Decimal("18.6")

    # Once the hourly rollups exist they are read instead of the raw rows: the same figures.
    refresh_rollups(engine, now=now)
    (rolled,) = quota_statuses(engine, settings(plan), now=now)
    assert (rolled.used, rolled.burn_per_hour, rolled.exhausts_at) == (
        status.used,
        status.burn_per_hour,
        status.exhausts_at,
    )
    # A late event (a spool replay) in an hour already rolled up counts at once, before the next refresh.
    late = ev(datetime(2026, 11, 5, 9, 50, tzinfo=JST), model="glm-4.7", cost=Cost(Decimal(1), "USD"))
    write_events(engine, [late])
    (replayed,) = quota_statuses(engine, settings(plan), now=now)
    assert replayed.used == status.used + 150


def test_monthly_budget_in_usd_converts_through_jpy(engine) -> None:
    now = datetime(2026, 11, 3, 0, 0, tzinfo=JST)
    write_events(
        engine,
        [
            ev(t, model="glm-4.7", cost=Cost(Decimal(150), "JPY"))
            for t in every(now - timedelta(hours=10), now, timedelta(hours=1))
        ],
    )
    plan = {"kind": "monthly_budget", "name": "usd", "amount": "100", "currency": "USD"}
    (status,) = quota_statuses(engine, settings(plan), now=now)
    assert status.used == Decimal(10)  # JPY 1,500 at the default 150 JPY per USD
    assert any("USDJPY 150 (no dated rate yet, default)" in n for n in status.notes)


# ---------------------------------------------------------------------------------------------------------
# Coding Plan (local estimate)

CODING = {
    "kind": "coding_plan",
    "name": "coding",
    "provider": "zai-coding",
    "five_hour_limit": 1000,
    "weekly_limit": 20000,
    "peak_multiplier": 3,
    "peak_hours": [14, 18],
    "peak_zone": "Asia/Shanghai",
    "poll_quota": False,
}


def coding(ts: datetime, **kw: Any) -> UsageEvent:
    return ev(ts, provider="zai-coding", model=kw.pop("model", "glm-4.7"), source=kw.pop("source", "transport"), **kw)


def test_coding_plan_burns_three_times_as_fast_in_peak_hours(engine) -> None:
    # The same rate (one request a minute) in an off-peak hour and, on another day, in a peak hour.
    off_peak_end = datetime(2026, 11, 24, 11, 0, tzinfo=CST)
    peak_end = datetime(2026, 11, 25, 16, 0, tzinfo=CST)
    events = [coding(t) for t in every(off_peak_end - timedelta(hours=1, seconds=-30), off_peak_end, MINUTE)]
    events += [coding(t) for t in every(peak_end - timedelta(hours=1, seconds=-30), peak_end, MINUTE)]
    # Not counted: probes, refusals (1308), pay-as-you-go traffic.
    events += [coding(peak_end - timedelta(seconds=45), source="probe")]
    events += [ev(off_peak_end - timedelta(days=1))]  # the monitor was already running the day before
    events += [coding(peak_end - timedelta(seconds=50), outcome=Outcome.QUOTA_EXHAUSTED)]
    events += [ev(peak_end - timedelta(seconds=55), provider="zai", model="glm-4.7")]
    write_events(engine, events)

    off = only(quota_statuses(engine, settings(CODING), now=off_peak_end), "5 hours")
    peak = only(quota_statuses(engine, settings(CODING), now=peak_end), "5 hours")

    assert (off.used, off.burn_per_hour, off.unit) == (Decimal(60), Decimal(60), "prompts")
    assert (peak.used, peak.burn_per_hour) == (Decimal(180), Decimal(180))
    assert peak.used == 3 * off.used
    assert peak.resets_at == datetime(2026, 11, 25, 20, 0, 30, tzinfo=CST)
    assert off.source == peak.source == "estimate"


def test_coding_plan_projection_speeds_up_when_peak_hours_begin(engine) -> None:
    now = datetime(2026, 11, 24, 13, 0, tzinfo=CST)
    write_events(engine, [coding(t) for t in every(now - timedelta(minutes=59, seconds=30), now, MINUTE)])
    plan = {**CODING, "five_hour_limit": 200}

    five = only(quota_statuses(engine, settings(plan), now=now), "5 hours")

    # 140 left: 60 by 14:00 at 60/h, then 80 at 180/h (26 min 40 s).
    assert five.used == 60
    assert close(five.exhausts_at, datetime(2026, 11, 24, 14, 26, 40, tzinfo=CST))
    assert five.runs_out_before_reset


def test_coding_plan_weighs_models_and_counts_tokens(engine) -> None:
    now = datetime(2026, 11, 24, 10, 0, tzinfo=CST)
    usage = Usage(input_tokens=1000, cached_input_tokens=800, output_tokens=500)
    write_events(
        engine,
        [
            coding(now - timedelta(minutes=10), model="glm-5", usage=usage),
            coding(now - timedelta(minutes=20), model="GLM-5", usage=usage),
            coding(now - timedelta(minutes=30), model="glm-4.7", usage=usage),
            coding(now - timedelta(minutes=40), model="glm-4.6", usage=usage),
        ],
    )
    plan = {**CODING, "unit": "tokens", "five_hour_limit": 100_000, "model_weights": {"glm-5": 2.0, "glm-4.7": 1.0}}

    statuses = quota_statuses(engine, settings(plan), now=now)
    five, week = only(statuses, "5 hours"), only(statuses, "week")

    assert five.unit == "tokens" and five.used == 1500 * 2 + 1500 * 2 + 1500 + 1500
    assert week.used == five.used and week.limit == 20000
    assert any("no weight configured for glm-4.6" in n for n in five.notes)


def test_coding_plan_without_usage_or_limits(engine) -> None:
    now = datetime(2026, 11, 24, 10, 0, tzinfo=CST)
    plan = {k: v for k, v in CODING.items() if k not in ("five_hour_limit", "weekly_limit")}
    statuses = quota_statuses(engine, settings(plan), now=now)
    assert [s.window for s in statuses] == ["5 hours", "week"]
    for s in statuses:
        assert s.used == 0 and s.limit is None and s.share is None and s.exhausts_at is None
        assert s.resets_at is None and not s.runs_out_before_reset


def test_no_plans_no_statuses(engine) -> None:
    assert quota_statuses(engine, settings()) == []
