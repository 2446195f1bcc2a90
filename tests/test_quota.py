"""Quota burn on real SQLite and Postgres: steady synthetic usage written with write_events must give the used
amount, burn rate, exhaustion time and reset a user would work out by hand."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, delete

from monitor import quota
from monitor.config import Settings, settings_from_dict
from monitor.events import EventSource, UsageEvent
from monitor.fx import store_rates
from monitor.models import RollupStateRow
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


# ---------------------------------------------------------------------------------------------------------
# Rollups: whole hours are read from the hourly rollups where they are current, the rest from the raw rows.
# Whatever the state of the rollups, every figure must be the one the raw rows give.

OUTCOME_MIX = (
    [Outcome.OK] * 14
    + [Outcome.RATE_LIMITED, Outcome.CONCURRENCY_LIMITED, Outcome.OVERLOADED, Outcome.QUOTA_EXHAUSTED]
    + [Outcome.AUTH_ERROR, Outcome.CLIENT_ERROR, Outcome.SERVER_ERROR, Outcome.TIMEOUT, Outcome.CONTENT_FILTERED]
)
REFUSED = {
    Outcome.RATE_LIMITED,
    Outcome.CONCURRENCY_LIMITED,
    Outcome.OVERLOADED,
    Outcome.QUOTA_EXHAUSTED,
    Outcome.AUTH_ERROR,
    Outcome.CLIENT_ERROR,
}


def mixed_events(
    rng: random.Random,
    times: Iterator[datetime],
    provider: str,
    models: list[str | None],
    sources: list[EventSource],
    outcomes: list[Outcome] = OUTCOME_MIX,
) -> list[UsageEvent]:
    """One event per time with a random model, source and outcome; tokens on most of them, refused ones too."""
    out = []
    for t in times:
        outcome = rng.choice(outcomes)
        tokens = rng.random() < (0.9 if outcome not in REFUSED else 0.3)
        usage = Usage(input_tokens=rng.randint(10, 900), output_tokens=rng.randint(1, 300)) if tokens else Usage()
        out.append(
            UsageEvent(
                ts=t,
                source=rng.choice(sources),
                provider=provider,
                model=rng.choice(models),
                vantage="test",
                outcome=outcome,
                usage=usage,
            )
        )
    return out


def jittered(rng: random.Random, start: datetime, end: datetime, step: timedelta) -> Iterator[datetime]:
    """About one time per ``step`` from ``start``, each at a random point of its step."""
    for t in every(start, end, step):
        yield t + timedelta(seconds=rng.uniform(0, step.total_seconds()))


def on_the_hour(start: datetime, end: datetime, every_hours: int, per_hour: int) -> Iterator[datetime]:
    """``per_hour`` times at exactly HH:00:00 every ``every_hours`` hours from the first whole hour at or after
    ``start`` (a pruned hour's start is then the exact time of its first request)."""
    first = start.replace(minute=0, second=0, microsecond=0)
    first += timedelta(hours=1) if first < start else timedelta(0)
    for t in every(first, end, timedelta(hours=every_hours)):
        yield from [t] * per_hour


def settle(engine: Engine, now: datetime) -> None:
    """Refresh the rollups twice with no overlap: every raw row is then settled (below ``safe_id``), as in a
    daemon once its overlap has passed, and whole hours are read from the rollups without counting raw rows."""
    refresh_rollups(engine, now=now, overlap=timedelta(0))
    refresh_rollups(engine, now=now, overlap=timedelta(0))


def forget_rollups(engine: Engine) -> None:
    """Drop the rollup bookkeeping of usage_events, as on a database no refresh ever ran on: every hour is then
    read from the raw rows."""
    with engine.begin() as conn:
        conn.execute(delete(RollupStateRow).where(RollupStateRow.dataset == "usage_events"))


def same_in_every_rollup_state(
    engine: Engine, config: Settings, now: datetime, late: list[UsageEvent], monkeypatch: pytest.MonkeyPatch
) -> tuple[list[QuotaStatus], list[QuotaStatus]]:
    """The statuses without rollups (the raw truth), then rolled up but not settled (hours checked by their raw
    counts: those of the unsettled rows, then every hour, as when too many rows are unsettled to look their
    hours up), then settled, then with ``late`` events in rolled-up hours (stale hours), then settled again: each
    must be the raw truth of its moment. Returns (truth before, truth after the late events)."""
    raw = quota_statuses(engine, config, now=now)
    refresh_rollups(engine, now=now)
    assert quota_statuses(engine, config, now=now) == raw
    with monkeypatch.context() as patch:
        patch.setattr(quota, "_UNSETTLED_MAX", 0)
        assert quota_statuses(engine, config, now=now) == raw
    settle(engine, now)
    assert quota_statuses(engine, config, now=now) == raw
    write_events(engine, late)
    stale = quota_statuses(engine, config, now=now)
    assert stale != raw  # the late events count at once, before the next refresh
    settle(engine, now)
    assert quota_statuses(engine, config, now=now) == stale
    forget_rollups(engine)
    assert quota_statuses(engine, config, now=now) == stale
    return raw, stale


NOW = datetime(2026, 11, 24, 10, 17, 23, tzinfo=UTC)
FREE = {
    "kind": "free_tier",
    "name": "flash",
    "provider": "zai",
    "models": ["glm-4.7-flash"],
    "requests_per_minute": 5,
    "requests_per_5h": 60,
    "requests_per_day": 150,
}


def free_tier_traffic(rng: random.Random) -> list[UsageEvent]:
    """Three days of zai traffic: on the hour until a day ago, at random times since; every source (probes
    too) and outcome; quiet spells with refusals only, which must not open a 5-hour window; other models."""
    flash: list[str | None] = ["glm-4.7-flash"]
    sources: list[EventSource] = ["proxy", "transport", "probe"]
    captured: list[EventSource] = ["proxy", "transport"]
    admitted = [o for o in OUTCOME_MIX if o not in REFUSED]
    refusals = [o for o in OUTCOME_MIX if o in REFUSED]
    day = NOW - timedelta(days=1)
    events = mixed_events(
        rng, on_the_hour(NOW - timedelta(hours=45), day - timedelta(hours=8), 1, 2), "zai", flash, sources
    )
    # Captured refusals only (a pruned hour's probe errors of unknown kind would count as used).
    events += mixed_events(
        rng, on_the_hour(day - timedelta(hours=8), day - timedelta(hours=6), 1, 3), "zai", flash, captured, refusals
    )
    events += mixed_events(
        rng, on_the_hour(day - timedelta(hours=6), day - timedelta(hours=1), 2, 1), "zai", flash, sources, admitted
    )
    events += mixed_events(
        rng, jittered(rng, day, NOW - timedelta(hours=9), timedelta(minutes=7)), "zai", flash, sources
    )
    events += mixed_events(
        rng,
        jittered(rng, NOW - timedelta(hours=9), NOW - timedelta(hours=3), timedelta(minutes=20)),
        "zai",
        flash,
        sources,
        refusals,
    )
    events += mixed_events(
        rng, jittered(rng, NOW - timedelta(hours=3), NOW, timedelta(minutes=4)), "zai", flash, sources
    )
    events += mixed_events(
        rng, jittered(rng, NOW - timedelta(days=2), NOW, timedelta(minutes=9)), "zai", ["glm-4.7"], sources
    )
    events += mixed_events(
        rng, jittered(rng, NOW - timedelta(days=2), NOW, timedelta(minutes=9)), "bigmodel", flash, sources
    )
    return events


def test_free_tier_is_the_same_from_rollups_and_raw_rows(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(1)
    write_events(engine, free_tier_traffic(rng))
    late = [
        ev(NOW - timedelta(hours=5, minutes=7)),
        ev(NOW - timedelta(hours=2, minutes=3), source="transport"),
        ev(NOW - timedelta(hours=2, minutes=4), source="probe", outcome=Outcome.CLIENT_ERROR),  # refused
        ev(NOW - timedelta(hours=2, minutes=5), source="probe", outcome=Outcome.SERVER_ERROR),  # used
        ev(NOW - timedelta(minutes=50), outcome=Outcome.QUOTA_EXHAUSTED),
        ev(NOW - timedelta(minutes=40), source="probe"),
    ]

    raw, after = same_in_every_rollup_state(engine, settings(FREE), NOW, late, monkeypatch)

    assert [s.window for s in raw] == ["minute", "5 hours", "day"]
    day, late_day = only(raw, "day"), only(after, "day")
    assert day.used > 0 and late_day.used == day.used + 4

    # Once the raw rows older than a day are pruned, the 5-hour chain walks through hours that only their
    # rollups remember (their requests are on the hour, so an hour's start is the exact time).
    settle(engine, NOW)
    prune_raw(engine, retention_days=1, now=NOW)
    assert quota_statuses(engine, settings(FREE), now=NOW) == after


CODING_WEIGHTS = {"glm-5": 2.0, "glm-4.7": 1.0}


def coding_traffic(rng: random.Random) -> list[UsageEvent]:
    """Five weeks of Coding Plan traffic (on the hour until a day ago, at random times since) with weighted,
    unweighted and nameless models, probes and refusals (some carrying tokens), and pay-as-you-go noise."""
    models: list[str | None] = ["glm-5", "GLM-5", "glm-4.7", "glm-4.6", None]
    sources: list[EventSource] = ["transport", "proxy", "probe"]
    day = NOW - timedelta(days=1)
    events = mixed_events(
        rng,
        on_the_hour(datetime(2026, 10, 29, 6, tzinfo=UTC), day - timedelta(days=10), 7, 3),
        "zai-coding",
        models,
        sources,
    )
    events += mixed_events(rng, on_the_hour(day - timedelta(days=8), day, 3, 2), "zai-coding", models, sources)
    events += mixed_events(rng, jittered(rng, day, NOW, timedelta(minutes=3)), "zai-coding", models, sources)
    events += mixed_events(
        rng, jittered(rng, NOW - timedelta(days=3), NOW, timedelta(minutes=30)), "zai", ["glm-5"], sources
    )
    return events


@pytest.mark.parametrize("unit", ["prompts", "tokens"])
@pytest.mark.parametrize("zone", ["Asia/Shanghai", "Asia/Kolkata"])  # Kolkata: peak hours start mid-UTC-hour
def test_coding_plan_is_the_same_from_rollups_and_raw_rows(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, unit: str, zone: str
) -> None:
    rng = random.Random(2)
    write_events(engine, coding_traffic(rng))
    plan = {
        **CODING,
        "unit": unit,
        "peak_zone": zone,
        "peak_hours": [14, 18],
        "model_weights": CODING_WEIGHTS,
        "five_hour_limit": 2000 if unit == "prompts" else 400_000,
        "weekly_limit": 20_000 if unit == "prompts" else 4_000_000,
    }
    late = [
        coding(NOW - timedelta(hours=1, minutes=37), model="glm-5", usage=Usage(input_tokens=700, output_tokens=50)),
        coding(NOW - timedelta(hours=1, minutes=38), outcome=Outcome.RATE_LIMITED, usage=Usage(input_tokens=9)),
        coding(NOW - timedelta(days=3, minutes=-5), model="glm-4.6", usage=Usage(input_tokens=5, output_tokens=5)),
        coding(NOW - timedelta(minutes=75), source="probe", usage=Usage(input_tokens=5, output_tokens=5)),
    ]

    raw, after = same_in_every_rollup_state(engine, settings(plan), NOW, late, monkeypatch)

    five, week = only(raw, "5 hours"), only(raw, "week")
    assert 0 < five.used < week.used and five.resets_at is not None and week.resets_at is not None
    assert only(after, "week").used > week.used


def test_coding_plan_weekly_window_keeps_counting_usage_whose_raw_rows_were_pruned(engine: Engine) -> None:
    rng = random.Random(3)
    write_events(engine, coding_traffic(rng))
    plan = {**CODING, "model_weights": CODING_WEIGHTS}
    settle(engine, NOW)
    before = quota_statuses(engine, settings(plan), now=NOW)

    report = prune_raw(engine, retention_days=1, now=NOW)
    after = quota_statuses(engine, settings(plan), now=NOW)

    assert report.deleted["usage_events"] > 0
    assert only(before, "week").used > only(before, "5 hours").used > 0
    assert after == before


def test_money_burn_window_leaves_out_its_first_instant_from_rollups_too(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime(2026, 11, 20, 12, 0, tzinfo=JST)  # on the hour: the burn window starts on the hour too
    events = [
        ev(t, model="glm-4.7", cost=Cost(Decimal("0.01"), "USD"))
        for t in every(datetime(2026, 11, 15, 0, 5, tzinfo=JST), now, timedelta(minutes=10))
    ]
    exactly_a_day_ago = ev(now - timedelta(hours=24), model="glm-4.7", cost=Cost(Decimal(100), "USD"))
    write_events(engine, [*events, exactly_a_day_ago])
    late = [ev(now - timedelta(hours=5, minutes=1), model="glm-4.7", cost=Cost(Decimal(1), "USD"))]
    plan = {"kind": "monthly_budget", "name": "b", "amount": "1000", "currency": "USD"}

    (raw,), (after,) = same_in_every_rollup_state(engine, settings(plan), now, late, monkeypatch)

    assert raw.burn_per_hour == Decimal("0.06")  # USD 0.06 an hour: the USD 100 at the window's start is out
    # The late USD 1 falls in the last 24 hours.
    assert after.burn_per_hour is not None and abs(after.burn_per_hour - Decimal("2.44") / 24) < Decimal("1e-9")
