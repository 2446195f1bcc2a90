"""Hourly rollups on real SQLite and Postgres: they match the raw rows, catch late rows, and survive pruning."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest
from sqlalchemy import Engine, func, insert, select, text

from monitor.analytics import Filters, latency_percentiles
from monitor.events import ProbeResult, UsageEvent
from monitor.models import (
    OutcomeHourlyRow,
    ProbeHourlyRow,
    ProbeResultRow,
    RollupHourRow,
    UsageEventRow,
    UsageHourlyRow,
)
from monitor.money import Cost
from monitor.outcomes import THROTTLED, Outcome
from monitor.rollup import (
    BUCKET_RATIO,
    COST_SCALE,
    bucket_lower_edge,
    bucket_of,
    floor_hour,
    prune_raw,
    refresh_rollups,
)
from monitor.usage import Usage
from monitor.writer import write_events

T0 = datetime(2026, 10, 5, tzinfo=UTC)
ROLLUP_TABLES = (ProbeHourlyRow, UsageHourlyRow, OutcomeHourlyRow)


def probe(ts: datetime, rng: random.Random, *, provider: str = "zai", vantage: str = "tokyo") -> ProbeResult:
    """A probe with a realistic spread of outcomes and lognormal latencies."""
    roll = rng.random()
    if roll < 0.08:
        return ProbeResult(
            ts=ts,
            provider=provider,
            model="glm-4.7",
            vantage=vantage,
            outcome=Outcome.RATE_LIMITED,
            http_status=429,
            error_code="1302",
            retry_after_s=rng.choice([1.0, 5.0, 30.0]),
            total_ms=rng.uniform(50, 200),
        )
    if roll < 0.11:
        return ProbeResult(ts=ts, provider=provider, model="glm-4.7", vantage=vantage, outcome=Outcome.TIMEOUT)
    ttft = rng.lognormvariate(np.log(400), 0.5)
    return ProbeResult(
        ts=ts,
        provider=provider,
        model="glm-4.7",
        vantage=vantage,
        outcome=Outcome.OK,
        http_status=200,
        ttft_ms=ttft,
        total_ms=ttft + rng.lognormvariate(np.log(1500), 0.3),
        tokens_per_s=rng.lognormvariate(np.log(60), 0.2),
        usage=Usage(input_tokens=20, output_tokens=5),
        cost=Cost(Decimal("0.000023"), "USD"),
    )


def usage(ts: datetime, rng: random.Random, *, source: str = "proxy") -> UsageEvent:
    """A real request: tokens, a cost in USD or CNY, now and then a throttle."""
    throttled = rng.random() < 0.1
    provider, currency = rng.choice([("zai", "USD"), ("bigmodel", "CNY")])
    tokens = Usage(input_tokens=rng.randint(100, 5000), cached_input_tokens=rng.randint(0, 80), output_tokens=50)
    return UsageEvent(
        ts=ts,
        source=source,  # type: ignore[arg-type]
        provider=provider,
        model=rng.choice(["glm-4.7", None]),
        vantage="tokyo",
        outcome=Outcome.CONCURRENCY_LIMITED if throttled else Outcome.OK,
        usage=Usage() if throttled else tokens,
        app=rng.choice(["crm", "chatbot", None]),
        http_status=429 if throttled else 200,
        error_code="1302" if throttled else None,
        cost=None if throttled else Cost(Decimal(rng.randint(1, 10**6)) / 10**9, currency),  # type: ignore[arg-type]
    )


def history(hours: int, per_hour: int, *, start: datetime = T0, seed: int = 1) -> list[ProbeResult | UsageEvent]:
    rng = random.Random(seed)
    events: list[ProbeResult | UsageEvent] = []
    for h in range(hours):
        for _ in range(per_hour):
            ts = start + timedelta(hours=h, seconds=rng.uniform(0, 3599.999))
            events.append(probe(ts, rng, vantage=rng.choice(["tokyo", "sg"])))
            events.append(usage(ts, rng, source=rng.choice(["proxy", "transport"])))
    return events


def dump(engine: Engine) -> dict[str, list[tuple[object, ...]]]:
    """Every rollup row, sorted, for comparing whole rollup states."""
    out = {}
    with engine.connect() as conn:
        for model in (*ROLLUP_TABLES, RollupHourRow):
            table = model.__table__
            rows = conn.execute(select(table)).all()
            cleaned = [tuple(v for k, v in r._mapping.items() if k != "computed_at") for r in rows]
            out[table.name] = sorted(cleaned, key=repr)
    return out


def expected_probe_rollup(events: list[ProbeResult | UsageEvent]) -> dict[tuple[object, ...], dict[str, object]]:
    """What the probe rollup must say, computed in plain Python from the events."""
    groups: dict[tuple[object, ...], list[ProbeResult]] = defaultdict(list)
    for ev in events:
        if isinstance(ev, ProbeResult):
            groups[(floor_hour(ev.ts), ev.provider, ev.model, ev.vantage)].append(ev)
    out = {}
    for key, evs in groups.items():
        ttfts = [e.ttft_ms for e in evs if e.ttft_ms is not None and e.ttft_ms > 0]
        retries = [e.retry_after_s for e in evs if e.retry_after_s is not None]
        last = max(evs, key=lambda e: e.ts)
        out[key] = {
            "requests": len(evs),
            "ok": sum(e.outcome == Outcome.OK for e in evs),
            "throttled": sum(e.outcome in THROTTLED for e in evs),
            "http_429": sum(e.http_status == 429 for e in evs),
            "retry_after_count": len(retries),
            "retry_after_max_s": max(retries) if retries else None,
            "ttft_count": len(ttfts),
            "ttft_sum_ms": pytest.approx(sum(ttfts)),
            "last_outcome": str(last.outcome),
            "last_ts": last.ts,
        }
    return out


def expected_usage_rollup(events: list[ProbeResult | UsageEvent]) -> dict[tuple[object, ...], dict[str, int]]:
    out: dict[tuple[object, ...], dict[str, int]] = defaultdict(Counter)  # type: ignore[arg-type]
    for ev in events:
        if not isinstance(ev, UsageEvent):
            continue
        row = out[(floor_hour(ev.ts), ev.provider, ev.model or "", ev.vantage, ev.app or "", ev.source)]
        row["requests"] += 1
        row["http_429"] += ev.http_status == 429
        row["input_tokens"] += ev.usage.input_tokens or 0
        row["cached_input_tokens"] += ev.usage.cached_input_tokens or 0
        if ev.cost is not None:
            row[f"cost_{ev.cost.currency.lower()}_e10"] += int(ev.cost.amount * COST_SCALE)
    return out


def check_matches_raw(engine: Engine, events: list[ProbeResult | UsageEvent]) -> None:
    """The rollups hold exactly what the events say, hour by hour."""
    with engine.connect() as conn:
        probes = {
            (r.hour, r.provider, r.model, r.vantage): r._mapping for r in conn.execute(select(ProbeHourlyRow.__table__))
        }
        usages = {
            (r.hour, r.provider, r.model, r.vantage, r.app, r.source): r._mapping
            for r in conn.execute(select(UsageHourlyRow.__table__))
        }
    want_probes = expected_probe_rollup(events)
    assert probes.keys() == want_probes.keys()
    for key, want in want_probes.items():
        got = probes[key]
        assert {k: got[k] for k in want} == want, key
    want_usage = expected_usage_rollup(events)
    assert usages.keys() == want_usage.keys()
    for key, want in want_usage.items():
        got = usages[key]
        assert {k: got[k] for k in want} == dict(want), key
        for currency in ("usd", "cny", "jpy"):
            assert got[f"cost_{currency}_e10"] == want.get(f"cost_{currency}_e10", 0)


# --- buckets -------------------------------------------------------------------------------------------------


def test_buckets_are_log_spaced_and_clamped():
    assert bucket_of(1.0) == 0
    assert bucket_of(10.0) == 100
    assert bucket_of(300.0) == 247  # 10**2.47 = 295.1 <= 300 < 10**2.48 = 302.0
    assert bucket_lower_edge(247) <= 300 < bucket_lower_edge(248)
    assert bucket_of(0.0) is None and bucket_of(-5.0) is None and bucket_of(float("nan")) is None
    assert bucket_of(1e-9) == bucket_of(1e-3) == -300
    assert bucket_of(1e12) == 700
    assert bucket_lower_edge(1) / bucket_lower_edge(0) == pytest.approx(BUCKET_RATIO)


# --- refresh -------------------------------------------------------------------------------------------------


def test_refresh_rolls_up_exactly_what_the_raw_rows_say(engine):
    events = history(hours=30, per_hour=12)
    write_events(engine, events)

    report = refresh_rollups(engine, now=T0 + timedelta(days=2))

    assert report.skipped is None
    assert {d.dataset: d.recomputed_hours for d in report.datasets} == {"probe_results": 30, "usage_events": 30}
    check_matches_raw(engine, events)


def test_outcome_breakdown_counts_codes_and_keeps_probes_apart_from_their_usage_mirror(engine):
    events = history(hours=3, per_hour=20)
    # The usage event a probe also records (source "probe") must not count twice in the breakdown.
    events += [UsageEvent(ts=T0, source="probe", provider="zai", model="glm-4.7", vantage="tokyo", outcome=Outcome.OK)]
    write_events(engine, events)
    refresh_rollups(engine, now=T0 + timedelta(days=1))

    with engine.connect() as conn:
        rows = conn.execute(
            select(OutcomeHourlyRow.source, OutcomeHourlyRow.outcome, OutcomeHourlyRow.error_code)
            .add_columns(func.sum(OutcomeHourlyRow.requests), func.sum(OutcomeHourlyRow.http_429))
            .group_by(OutcomeHourlyRow.source, OutcomeHourlyRow.outcome, OutcomeHourlyRow.error_code)
        ).all()
    got = {(s, o, c): (int(n), int(n429)) for s, o, c, n, n429 in rows}
    want: Counter[tuple[str, str, str]] = Counter()
    want429: Counter[tuple[str, str, str]] = Counter()
    for ev in events:
        if isinstance(ev, UsageEvent) and ev.source == "probe":
            continue
        key = ("probe" if isinstance(ev, ProbeResult) else ev.source, str(ev.outcome), ev.error_code or "")
        want[key] += 1
        want429[key] += ev.http_status == 429
    assert got == {k: (want[k], want429[k]) for k in want}
    assert got[("probe", "rate_limited", "1302")][1] == got[("probe", "rate_limited", "1302")][0] > 0


def test_catch_up_spans_many_transactions(engine):
    hours = 53
    events = history(hours=hours, per_hour=2, seed=7)
    write_events(engine, events)
    per_hour = {
        "probe_results": Counter(floor_hour(e.ts) for e in events if isinstance(e, ProbeResult)),
        "usage_events": Counter(floor_hour(e.ts) for e in events if isinstance(e, UsageEvent)),
    }

    report = refresh_rollups(engine, now=T0 + timedelta(days=5), batch_rows=9)

    assert report.recomputed_hours == 2 * hours
    for d in report.datasets:
        # Hours go in whole, in order, while they fit in 9 rows: the same packing done by hand.
        expected, rows = 0, 9
        for h in sorted(per_hour[d.dataset]):
            n = per_hour[d.dataset][h]
            expected, rows = (expected, rows + n) if rows + n <= 9 else (expected + 1, n)
        assert d.transactions == expected > 10
    check_matches_raw(engine, events)


def test_sparse_hours_months_apart_share_transactions_within_a_month(engine):
    # One usage event every 12 hours for 100 days: each month's hours are recomputed in one transaction.
    start = T0 - timedelta(days=100)
    rng = random.Random(4)
    events = [usage(start + timedelta(hours=12 * i), rng) for i in range(200)]
    write_events(engine, events)

    report = refresh_rollups(engine, now=T0 + timedelta(days=1))

    (usage_report,) = [d for d in report.datasets if d.dataset == "usage_events"]
    assert usage_report.recomputed_hours == 200
    assert usage_report.transactions == 4  # 100 days in spans of 31
    check_matches_raw(engine, events)


def test_refresh_twice_gives_the_same_rollups(engine):
    write_events(engine, history(hours=6, per_hour=10))
    refresh_rollups(engine, now=T0 + timedelta(hours=7))
    first = dump(engine)

    again = refresh_rollups(engine, now=T0 + timedelta(hours=7, minutes=1))

    assert again.recomputed_hours == 0
    assert dump(engine) == first


def test_rebuilding_every_hour_gives_the_same_rollups(engine):
    from monitor.rollup import rebuild_rollups

    write_events(engine, history(hours=6, per_hour=10))
    refresh_rollups(engine, now=T0 + timedelta(hours=7))
    first = dump(engine)

    report = rebuild_rollups(engine, now=T0 + timedelta(hours=8))

    assert report.recomputed_hours == 12
    assert dump(engine) == first


def test_late_events_in_rolled_up_hours_are_included_by_the_next_refresh(engine):
    events = history(hours=24, per_hour=10)
    write_events(engine, events)
    refresh_rollups(engine, now=T0 + timedelta(days=1))
    before = dump(engine)

    # A spool replay: events from hours rolled up long ago arrive now (plus a duplicate, stored once).
    late = history(hours=3, per_hour=5, start=T0 + timedelta(hours=5), seed=99)
    write_events(engine, [*late, events[0]])
    report = refresh_rollups(engine, now=T0 + timedelta(days=1, minutes=1))

    assert {d.dataset: d.recomputed_hours for d in report.datasets} == {"probe_results": 3, "usage_events": 3}
    check_matches_raw(engine, events + late)
    assert dump(engine) != before


def test_rows_committed_out_of_id_order_are_not_missed(engine):
    """A row whose id is below one already seen (a slower transaction) is caught within the overlap."""
    table = ProbeResultRow.__table__
    rng = random.Random(3)
    early = [probe(T0 + timedelta(minutes=m), rng) for m in range(5)]
    gap_row = probe(T0 + timedelta(hours=2, minutes=10), rng)
    now = T0 + timedelta(hours=3)
    with engine.begin() as conn:
        conn.execute(insert(table), [{**e.to_row(), "id": i + 1} for i, e in enumerate(early)])
        conn.execute(insert(table), [{**probe(T0 + timedelta(hours=2), rng).to_row(), "id": 50}])
    refresh_rollups(engine, now=now)
    refresh_rollups(engine, now=now + timedelta(minutes=1))

    # Id 20 was handed out before id 50 but its transaction commits only now.
    with engine.begin() as conn:
        conn.execute(insert(table), [{**gap_row.to_row(), "id": 20}])
    refresh_rollups(engine, now=now + timedelta(minutes=2))

    with engine.connect() as conn:
        hour2 = conn.execute(
            select(ProbeHourlyRow.requests).where(ProbeHourlyRow.hour == T0 + timedelta(hours=2))
        ).scalar_one()
    assert hour2 == 2

    # Once the overlap has passed, refreshes stop re-reading old rows.
    refresh_rollups(engine, now=now + timedelta(minutes=15))
    later = refresh_rollups(engine, now=now + timedelta(minutes=30))
    assert later.datasets[0].scanned_after_id == 50


def test_postgres_transaction_committed_after_a_later_one_is_rolled_up(engine):
    if engine.dialect.name != "postgresql":
        pytest.skip("ids are handed out in commit order on SQLite")
    rng = random.Random(5)
    slow = probe(T0 + timedelta(minutes=30), rng)
    fast = probe(T0 + timedelta(minutes=40), rng)
    with engine.connect() as slow_conn:
        txn = slow_conn.begin()
        slow_conn.execute(insert(ProbeResultRow.__table__), [slow.to_row()])  # takes its id now
        write_events(engine, [fast])  # a later id, committed first
        refresh_rollups(engine, now=T0 + timedelta(hours=1))
        txn.commit()
    refresh_rollups(engine, now=T0 + timedelta(hours=1, minutes=1))

    with engine.connect() as conn:
        ids = conn.execute(select(ProbeResultRow.id).order_by(ProbeResultRow.ts)).scalars().all()
        requests = conn.execute(select(func.sum(ProbeHourlyRow.requests))).scalar_one()
    assert ids[0] < ids[1]
    assert requests == 2


def test_a_refresh_running_elsewhere_makes_this_one_skip(engine):
    if engine.dialect.name != "postgresql":
        pytest.skip("the cross-daemon lock is Postgres's advisory lock")
    from monitor import rollup

    with engine.connect() as other:
        other.execute(text("SELECT pg_advisory_lock(:k)"), {"k": rollup._PG_LOCK_KEY})
        report = refresh_rollups(engine, now=T0)
        other.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": rollup._PG_LOCK_KEY})
        other.commit()
    assert report.skipped is not None
    assert refresh_rollups(engine, now=T0).skipped is None


# --- pruning -------------------------------------------------------------------------------------------------


def totals(engine: Engine) -> dict[str, object]:
    with engine.connect() as conn:
        probe_sums = conn.execute(
            select(func.sum(ProbeHourlyRow.requests), func.sum(ProbeHourlyRow.ttft_count), func.count())
        ).one()
        usage_sums = conn.execute(
            select(
                func.sum(UsageHourlyRow.requests),
                func.sum(UsageHourlyRow.input_tokens),
                func.sum(UsageHourlyRow.cost_usd_e10),
                func.sum(UsageHourlyRow.cost_cny_e10),
            )
        ).one()
        outcome_sums = conn.execute(select(func.sum(OutcomeHourlyRow.requests))).one()
    return {"probe": tuple(probe_sums), "usage": tuple(usage_sums), "outcomes": tuple(outcome_sums)}


def raw_count(engine: Engine, model: type[ProbeResultRow] | type[UsageEventRow], before: datetime) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).where(model.ts < before)).scalar_one())


def test_prune_removes_old_raw_rows_and_keeps_rollup_totals(engine):
    events = history(hours=72, per_hour=4)
    write_events(engine, events)
    refresh_rollups(engine, now=T0 + timedelta(days=3))
    before = totals(engine)
    now = T0 + timedelta(days=32, hours=7, minutes=30)

    report = prune_raw(engine, retention_days=30, now=now)

    cutoff = T0 + timedelta(days=2, hours=7)  # whole hours: 30 days before 07:30 on day 32 is 07:00 on day 2
    assert report.cutoff == cutoff
    assert raw_count(engine, ProbeResultRow, cutoff) == 0
    assert raw_count(engine, UsageEventRow, cutoff) == 0
    kept = [e for e in events if e.ts >= cutoff]
    assert raw_count(engine, ProbeResultRow, now) == sum(isinstance(e, ProbeResult) for e in kept)
    assert report.deleted["probe_results"] == sum(isinstance(e, ProbeResult) for e in events) - sum(
        isinstance(e, ProbeResult) for e in kept
    )
    assert totals(engine) == before

    # Refreshing afterwards, even with a late row in a pruned hour, changes nothing already rolled up.
    write_events(engine, history(hours=1, per_hour=3, start=T0 + timedelta(hours=1), seed=11))
    refresh = refresh_rollups(engine, now=now + timedelta(minutes=1))
    assert refresh.recomputed_hours == 0
    assert sum(d.hours_before_retention for d in refresh.datasets) == 2
    assert totals(engine) == before


def test_prune_rolls_up_rows_not_yet_rolled_up_before_deleting_them(engine):
    events = history(hours=10, per_hour=5)
    write_events(engine, events)

    prune_raw(engine, retention_days=1, now=T0 + timedelta(days=5))

    assert raw_count(engine, ProbeResultRow, T0 + timedelta(days=5)) == 0
    check_matches_raw(engine, events)


# --- percentiles ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("granularity", ["hour", "day"])
def test_percentiles_from_rollups_match_the_raw_values_within_one_bucket(engine, granularity):
    rng = random.Random(42)
    events: list[ProbeResult] = []
    for i in range(48 * 60):
        ts = T0 + timedelta(minutes=i)
        ttft = rng.lognormvariate(np.log(350), 0.6)
        events.append(
            ProbeResult(
                ts=ts,
                provider="zai",
                model="glm-4.7",
                vantage="tokyo",
                outcome=Outcome.OK,
                ttft_ms=ttft,
                total_ms=ttft + rng.lognormvariate(np.log(2000), 0.4),
                tokens_per_s=rng.lognormvariate(np.log(45), 0.3),
            )
        )
    write_events(engine, events)
    refresh_rollups(engine, now=T0 + timedelta(days=3))

    frame = latency_percentiles(engine, Filters(T0, T0 + timedelta(days=2)), granularity=granularity, zone="UTC")

    raw_field = {"ttft_ms": "ttft_ms", "total_ms": "total_ms", "tokens_per_s": "tokens_per_s"}
    periods = frame["period"].unique()
    assert len(periods) == (48 if granularity == "hour" else 2)
    tolerance = BUCKET_RATIO * (1 + 1e-9)
    for row in frame.itertuples():
        start = row.period.to_pydatetime()
        end = start + (timedelta(hours=1) if granularity == "hour" else timedelta(days=1))
        values = np.array([getattr(e, raw_field[row.metric]) for e in events if start <= e.ts < end])
        assert row.samples == len(values)
        assert row.mean == pytest.approx(values.mean())
        for q, got in ((0.5, row.p50), (0.95, row.p95), (0.99, row.p99)):
            # The sample quantile: the smallest value with at least q of the values at or below it.
            exact = float(np.quantile(values, q, method="inverted_cdf"))
            assert 1 / tolerance <= got / exact <= tolerance, (row.period, row.metric, q, got, exact)
