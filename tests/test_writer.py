"""The batched writer on real SQLite and Postgres: every event stored once, from any thread or task."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import func, select

from monitor.events import ProbeResult, UsageEvent
from monitor.models import ProbeResultRow, UsageEventRow
from monitor.money import Cost
from monitor.outcomes import Outcome
from monitor.usage import Usage
from monitor.writer import EventWriter, write_events


def _usage_event(i: int = 0, **kw) -> UsageEvent:
    defaults = dict(
        ts=datetime.now(UTC),
        source="proxy",
        provider="zai",
        model="glm-4.7",
        vantage="test",
        outcome=Outcome.OK,
        app=f"app{i % 3}",
        usage=Usage(input_tokens=1000 + i, cached_input_tokens=200, output_tokens=100, reasoning_tokens=40),
        cost=Cost(Decimal("0.000722"), "USD"),
        price_source="genai-prices",
    )
    defaults.update(kw)
    return UsageEvent(**defaults)


def _count(engine, table=UsageEventRow) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def _wait_for(predicate, timeout=10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_events_from_threads_and_tasks_are_all_stored_once(engine):
    per_thread = 1500
    with EventWriter(engine, batch_size=500, flush_interval_s=0.2) as writer:

        def produce(offset: int) -> None:
            for i in range(per_thread):
                writer.submit(_usage_event(offset + i))

        threads = [threading.Thread(target=produce, args=(k * per_thread,)) for k in range(4)]
        for t in threads:
            t.start()

        async def produce_async() -> None:
            async def one(i: int) -> None:
                writer.submit(_usage_event(i))
                await asyncio.sleep(0)

            await asyncio.gather(*(one(10_000 + i) for i in range(1000)))

        asyncio.run(produce_async())
        for t in threads:
            t.join()
        assert writer.flush(timeout=30)
    assert _count(engine) == 4 * per_thread + 1000
    with engine.connect() as conn:
        distinct = conn.execute(select(func.count(func.distinct(UsageEventRow.event_id)))).scalar_one()
    assert distinct == 4 * per_thread + 1000


def test_every_field_round_trips(engine):
    ev = _usage_event(
        7,
        stream=True,
        http_status=200,
        latency_ms=812.5,
        ttft_ms=301.25,
        usage=Usage(
            input_tokens=1000,
            cached_input_tokens=200,
            cache_write_tokens=50,
            output_tokens=100,
            reasoning_tokens=40,
            model="glm-4.7",
            request_id="2026020917585695a7e8be40254c7c",
            finish_reason="stop",
            complete=False,
        ),
        cost=Cost(Decimal("0.000007765"), "USD"),
    )
    write_events(engine, [ev])
    with engine.connect() as conn:
        row = conn.execute(select(UsageEventRow)).one()
    assert row.event_id == ev.event_id
    assert row.ts == ev.ts
    assert (row.input_tokens, row.cached_input_tokens, row.cache_write_tokens) == (1000, 200, 50)
    assert (row.output_tokens, row.reasoning_tokens, row.images) == (100, 40, None)
    assert row.cost_amount == Decimal("0.000007765")
    assert row.cost_currency == "USD"
    assert row.complete is False
    assert row.outcome == "ok"
    assert row.request_id == "2026020917585695a7e8be40254c7c"


def test_a_replayed_batch_is_stored_once(engine):
    events = [_usage_event(i) for i in range(50)]
    write_events(engine, events)
    write_events(engine, [*events[10:40], _usage_event(99)])
    assert _count(engine) == 51


def test_mixed_event_kinds_go_to_their_tables(engine):
    probe = ProbeResult(
        ts=datetime.now(UTC),
        provider="zai",
        model="glm-4.7-flash",
        vantage="test",
        outcome=Outcome.CONCURRENCY_LIMITED,
        http_status=429,
        error_code="1302",
    )
    write_events(engine, [probe, _usage_event(1)])
    assert _count(engine, ProbeResultRow) == 1
    assert _count(engine, UsageEventRow) == 1
    with engine.connect() as conn:
        row = conn.execute(select(ProbeResultRow)).one()
    assert (row.outcome, row.http_status, row.error_code) == ("concurrency_limited", 429, "1302")


def test_a_partial_batch_is_written_within_the_flush_interval(engine):
    with EventWriter(engine, batch_size=10_000, flush_interval_s=0.2) as writer:
        writer.submit(_usage_event())
        # No flush() call: the interval alone must get it written.
        assert _wait_for(lambda: _count(engine) == 1)


def test_a_full_batch_is_written_without_waiting_for_the_interval(engine):
    with EventWriter(engine, batch_size=10, flush_interval_s=3600) as writer:
        for i in range(10):
            writer.submit(_usage_event(i))
        assert _wait_for(lambda: _count(engine) == 10)


def test_close_writes_what_is_queued(engine):
    writer = EventWriter(engine, batch_size=10_000, flush_interval_s=3600).start()
    for i in range(25):
        writer.submit(_usage_event(i))
    writer.close()
    assert _count(engine) == 25


def test_a_locked_sqlite_database_delays_but_loses_nothing(sqlite_database, tmp_path):
    from monitor.store import make_engine, upgrade

    upgrade(sqlite_database)
    engine = make_engine(sqlite_database, connect_args={"timeout": 0.05})
    locker = sqlite3.connect(str(tmp_path / "monitor.db"), timeout=0)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with EventWriter(engine, batch_size=5, flush_interval_s=0.05, retry_backoff_s=(0.05, 0.2)) as writer:
            for i in range(20):
                writer.submit(_usage_event(i))
            assert _wait_for(lambda: writer.failed_writes > 0)
            locker.rollback()
            assert writer.flush(timeout=30)
    finally:
        locker.close()
        engine.dispose()
    check = make_engine(sqlite_database)
    assert _count(check) == 20
    check.dispose()


def test_spooled_while_sqlite_is_locked_then_every_event_stored_with_the_busy_timeout_intact(sqlite_database, tmp_path):
    """Replays retried while another writer holds the lock ask SQLite only briefly; afterwards the connections
    wait their configured busy timeout again, and every event, spooled or not, is stored once."""
    from monitor.spool import Spool
    from monitor.store import make_engine, upgrade

    upgrade(sqlite_database)
    engine = make_engine(sqlite_database, sqlite_busy_timeout_ms=400)
    spool = Spool(tmp_path / "events.spool")
    locker = sqlite3.connect(str(tmp_path / "monitor.db"), timeout=0)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with EventWriter(
            engine, batch_size=5, flush_interval_s=0.05, retry_backoff_s=(0.05, 0.2), spool=spool
        ) as writer:
            for i in range(10):
                writer.submit(_usage_event(i))
            assert _wait_for(lambda: writer.spooled >= 10)
            for i in range(10, 40):  # later batches retry the replay (the spool is not empty) and spool again
                writer.submit(_usage_event(i))
                time.sleep(0.01)
            assert _wait_for(lambda: writer.spooled >= 40)
            assert writer.failed_writes >= 2
            locker.rollback()
        assert writer.written == 40 and writer.replayed >= 10  # closing replays what is still spooled
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 400
        assert _count(engine) == 40
    finally:
        locker.close()
        engine.dispose()


def test_an_event_twice_in_one_batch_is_stored_once(engine):
    first, second = _usage_event(1), _usage_event(2)
    write_events(engine, [first, second, first, first])
    with EventWriter(engine, batch_size=100, flush_interval_s=3600) as writer:
        for ev in (second, _usage_event(3), second):
            writer.submit(ev)
        assert writer.flush(timeout=30)
    assert _count(engine) == 3


def test_money_with_ten_decimal_places_round_trips_exactly(engine):
    amounts = [Decimal("0.0000077651"), Decimal("0.0000000001"), Decimal("1234.5678901234"), Decimal("0E-10")]
    events = [_usage_event(i, cost=Cost(amount, "USD")) for i, amount in enumerate(amounts)]
    with EventWriter(engine, batch_size=100) as writer:
        for ev in events:
            writer.submit(ev)
        assert writer.flush(timeout=30)
    with engine.connect() as conn:
        stored = dict(conn.execute(select(UsageEventRow.event_id, UsageEventRow.cost_amount)).all())
    assert [stored[ev.event_id] for ev in events] == amounts


def test_events_the_database_refuses_are_dropped_and_the_rest_of_the_batch_stored(engine, caplog):
    naive = _usage_event(1, ts=datetime(2026, 11, 22, 12, 0))
    no_provider = _usage_event(2, provider=None)  # NOT NULL column: refused by the database itself
    good = [_usage_event(10 + i) for i in range(20)]
    with EventWriter(engine, batch_size=100, flush_interval_s=3600, retry_backoff_s=(0.01, 0.05)) as writer:
        for ev in [*good[:7], naive, *good[7:15], no_provider, *good[15:]]:
            writer.submit(ev)
        assert writer.flush(timeout=30)
        assert (writer.rejected, writer.written) == (2, 20)
    with engine.connect() as conn:
        stored = set(conn.execute(select(UsageEventRow.event_id)).scalars())
    assert stored == {ev.event_id for ev in good}
    logged = caplog.text
    assert naive.event_id in logged and "naive datetime" in logged
    assert no_provider.event_id in logged


def test_write_events_refuses_a_naive_timestamp_and_writes_nothing(engine):
    import pytest

    with pytest.raises(ValueError, match="naive datetime"):
        write_events(engine, [_usage_event(1), _usage_event(2, ts=datetime(2026, 11, 22, 12, 0))])
    assert _count(engine) == 0


def test_a_count_the_column_cannot_hold_is_never_stored_as_another_number(engine):
    huge = _usage_event(1, usage=Usage(input_tokens=2**40, output_tokens=2**31))
    with EventWriter(engine, batch_size=100, retry_backoff_s=(0.01, 0.05)) as writer:
        writer.submit(huge)
        writer.submit(_usage_event(2))
        assert writer.flush(timeout=30)
    with engine.connect() as conn:
        stored = conn.execute(
            select(UsageEventRow.input_tokens, UsageEventRow.output_tokens).where(
                UsageEventRow.event_id == huge.event_id
            )
        ).all()
    # SQLite integers hold it; Postgres' 32-bit INTEGER refuses it, and then the event is left out, not mangled.
    assert stored == [(2**40, 2**31)] or (stored == [] and writer.rejected == 1)
    assert _count(engine) == 1 + len(stored)


# --- the spool: nothing is lost while the database is away, locked, or the writer falls behind


def _spool_count(engine) -> int:
    from monitor.models import UsageEventRow as Row

    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(Row)).scalar_one()


def test_a_database_outage_goes_to_the_spool_and_is_replayed_once(private_postgres, tmp_path):
    from monitor.spool import Spool
    from monitor.store import make_engine, upgrade

    upgrade(private_postgres.url)
    engine = make_engine(private_postgres.url, pool_pre_ping=True)
    spool = Spool(tmp_path / "outage.spool")
    events = [_usage_event(i) for i in range(600)]
    with EventWriter(engine, batch_size=100, flush_interval_s=0.05, retry_backoff_s=(0.05, 0.5), spool=spool) as w:
        for ev in events[:200]:
            w.submit(ev)
        assert w.flush(timeout=30)
        private_postgres.stop()
        for ev in events[200:500]:
            w.submit(ev)
        assert w.flush(timeout=30), "flush returns once the events are safe in the spool"
        assert w.spooled == 300 and spool.pending_bytes() > 0
        private_postgres.start()
        for ev in events[500:] + events[:50]:  # 50 replays of stored events, too
            w.submit(ev)
        assert _wait_for(lambda: spool.pending_bytes() == 0, timeout=30)
        assert w.flush(timeout=30)
    assert _spool_count(engine) == 600
    with engine.connect() as conn:
        ids = set(conn.execute(select(UsageEventRow.event_id)).scalars())
    assert ids == {e.event_id for e in events}
    engine.dispose()


def test_a_spool_left_by_a_crash_is_replayed_at_the_next_start(engine, tmp_path):
    from monitor.spool import Spool

    spool = Spool(tmp_path / "crash.spool")
    left = [_usage_event(i) for i in range(40)]
    spool.append("usage_events", [e.to_row() for e in left])
    with EventWriter(engine, spool=spool) as w:
        assert _wait_for(lambda: spool.pending_bytes() == 0)
        assert w.replayed == 40
    assert _count(engine) == 40


def test_a_locked_sqlite_database_spools_and_loses_nothing(sqlite_database, tmp_path):
    from monitor.spool import Spool
    from monitor.store import make_engine, upgrade

    upgrade(sqlite_database)
    engine = make_engine(sqlite_database, sqlite_busy_timeout_ms=50)
    spool = Spool(tmp_path / "locked.spool")
    locker = sqlite3.connect(str(tmp_path / "monitor.db"), timeout=0)
    try:
        with EventWriter(engine, batch_size=50, flush_interval_s=0.05, retry_backoff_s=(0.05, 0.3), spool=spool) as w:
            w.submit(_usage_event(0))
            assert w.flush(timeout=30)  # the plans are built while the database is free
            locker.execute("BEGIN EXCLUSIVE")
            for i in range(1, 300):
                w.submit(_usage_event(i))
            assert w.flush(timeout=30)
            assert w.spooled > 0
            locker.rollback()
            assert _wait_for(lambda: spool.pending_bytes() == 0, timeout=30)
    finally:
        locker.close()
    assert _count(engine) == 300
    engine.dispose()


def test_past_max_queue_the_writer_spills_to_the_spool_instead_of_growing(sqlite_database, tmp_path):
    from monitor.spool import Spool
    from monitor.store import make_engine, upgrade

    upgrade(sqlite_database)
    engine = make_engine(sqlite_database, sqlite_busy_timeout_ms=50)
    spool = Spool(tmp_path / "spill.spool")
    locker = sqlite3.connect(str(tmp_path / "monitor.db"), timeout=0)
    try:
        with EventWriter(engine, batch_size=20, flush_interval_s=0.05, spool=spool, max_queue=100) as w:
            w.submit(_usage_event(0))
            assert w.flush(timeout=30)
            locker.execute("BEGIN EXCLUSIVE")
            for i in range(1, 5000):
                w.submit(_usage_event(i))
            assert w.flush(timeout=60)
            assert w.spooled >= 4000
            locker.rollback()
            assert _wait_for(lambda: spool.pending_bytes() == 0, timeout=60)
    finally:
        locker.close()
    assert _count(engine) == 5000
    engine.dispose()
