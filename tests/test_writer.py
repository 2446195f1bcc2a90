"""The batched writer on real SQLite and Postgres: every event stored once, from any thread or task."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import func, select

from monitor.events import ProbeResult, UsageEvent
from monitor.journal import DeadLetters, Journal
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


def test_journaled_while_sqlite_is_locked_then_every_event_stored_with_the_busy_timeout_intact(
    sqlite_database, tmp_path
):
    """Catch-ups retried while another writer holds the lock ask SQLite only briefly; afterwards the connections
    wait their configured busy timeout again, and every event, read back from the journal or not, is stored once."""
    from monitor.store import make_engine, upgrade

    upgrade(sqlite_database)
    engine = make_engine(sqlite_database, sqlite_busy_timeout_ms=400)
    journal = Journal(tmp_path / "journal").open()
    locker = sqlite3.connect(str(tmp_path / "monitor.db"), timeout=0)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        with EventWriter(
            engine, batch_size=5, flush_interval_s=0.05, retry_backoff_s=(0.05, 0.2), journal=journal
        ) as writer:
            for i in range(10):
                writer.submit(_usage_event(i))
            assert _wait_for(lambda: writer.deferred >= 10)
            for i in range(10, 40):  # later batches retry the catch-up and wait in the journal again
                writer.submit(_usage_event(i))
                time.sleep(0.01)
            assert _wait_for(lambda: writer.deferred >= 40)
            assert writer.failed_writes >= 2
            locker.rollback()
        assert writer.written == 40 and writer.replayed >= 10  # closing reads back what is still behind
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 400
        assert _count(engine) == 40
        assert list((tmp_path / "journal").glob("*.jnl")) == []  # all stored: a clean stop leaves no file
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


def test_a_count_the_column_cannot_hold_is_set_aside_and_never_stops_the_writer(engine, tmp_path, caplog):
    """2**63 overflows SQLite's and Postgres' 64-bit integers: the row goes to the dead-letter file with its
    reason, logged once, and every event before and after it is stored."""
    big = _usage_event(1, usage=Usage(input_tokens=2**40, output_tokens=2**31))  # 64-bit columns hold these
    poison = [_usage_event(100 + i, usage=Usage(input_tokens=2**63 + i, output_tokens=1)) for i in range(3)]
    good = [_usage_event(10 + i) for i in range(30)]
    journal = Journal(tmp_path / "journal").open()
    letters = DeadLetters(tmp_path / "journal")
    with EventWriter(
        engine, batch_size=100, retry_backoff_s=(0.01, 0.05), journal=journal, dead_letters=letters
    ) as writer:
        for ev in [big, *good[:10], poison[0], *good[10:20], *poison[1:], *good[20:]]:
            writer.submit(ev)
        assert writer.flush(timeout=30)
        assert (writer.rejected, writer.written) == (3, 31)
    with engine.connect() as conn:
        stored = dict(conn.execute(select(UsageEventRow.event_id, UsageEventRow.input_tokens)).all())
    assert stored == {big.event_id: 2**40, **{ev.event_id: ev.usage.input_tokens for ev in good}}
    lines = [json.loads(line) for line in letters.path.read_text().splitlines()]
    assert [line["r"]["row"]["event_id"] for line in lines] == [ev.event_id for ev in poison]
    assert all("Overflow" in line["r"]["reason"] or "out of range" in line["r"]["reason"] for line in lines)
    refusals = [r for r in caplog.records if "cannot be stored" in r.getMessage()]
    assert len(refusals) == 1 and poison[0].event_id in refusals[0].getMessage()


# --- the journal: nothing is lost while the database is away, locked, or the writer falls behind


def test_a_database_outage_waits_in_the_journal_and_is_written_once(private_postgres, tmp_path):
    from monitor.store import make_engine, upgrade

    upgrade(private_postgres.url)
    engine = make_engine(private_postgres.url, pool_pre_ping=True)
    journal = Journal(tmp_path / "journal").open()
    events = [_usage_event(i) for i in range(600)]
    with EventWriter(engine, batch_size=100, flush_interval_s=0.05, retry_backoff_s=(0.05, 0.5), journal=journal) as w:
        for ev in events[:200]:
            w.submit(ev)
        assert w.flush(timeout=30)
        private_postgres.stop()
        for ev in events[200:500]:
            w.submit(ev)
        assert w.flush(timeout=30), "flush returns once the events are safe in the journal"
        assert w.deferred == 300
        private_postgres.start()
        for ev in events[500:] + events[:50]:  # 50 repeats of stored events, too
            w.submit(ev)
        assert _wait_for(lambda: _count(engine) == 600, timeout=30)
        assert w.flush(timeout=30)
    with engine.connect() as conn:
        ids = list(conn.execute(select(UsageEventRow.event_id)).scalars())
    assert sorted(ids) == sorted(e.event_id for e in events)
    assert list((tmp_path / "journal").glob("*.jnl")) == []
    engine.dispose()


_DIE_AFTER_APPENDING = """
import os, sys
from datetime import UTC, datetime
from monitor.events import UsageEvent
from monitor.journal import Journal
from monitor.outcomes import Outcome
from monitor.usage import Usage
journal = Journal(sys.argv[1]).open()
for i in range(int(sys.argv[2])):
    ev = UsageEvent(ts=datetime.now(UTC), source="proxy", provider="zai", model="glm-4.7", vantage="t",
                    outcome=Outcome.OK, usage=Usage(input_tokens=i, output_tokens=1))
    journal.append(ev.table, ev.to_row())
os.kill(os.getpid(), 9)
"""


def test_a_journal_left_by_a_killed_process_is_written_at_the_next_start(engine, tmp_path):
    directory = tmp_path / "journal"
    died = subprocess.run([sys.executable, "-c", _DIE_AFTER_APPENDING, str(directory), "40"], check=False)
    assert died.returncode == -9
    assert len(list(directory.glob("*.jnl"))) == 1

    with EventWriter(engine, journal=Journal(directory).open()) as w:
        assert _wait_for(lambda: _count(engine) == 40)
        assert w.replayed == 40
    assert list(directory.glob("*.jnl")) == []


def test_past_max_queue_the_writer_reads_back_from_the_journal_instead_of_growing(sqlite_database, tmp_path):
    from monitor.store import make_engine, upgrade

    upgrade(sqlite_database)
    engine = make_engine(sqlite_database, sqlite_busy_timeout_ms=50)
    journal = Journal(tmp_path / "journal").open()
    locker = sqlite3.connect(str(tmp_path / "monitor.db"), timeout=0)
    try:
        with EventWriter(engine, batch_size=20, flush_interval_s=0.05, journal=journal, max_queue=100) as w:
            w.submit(_usage_event(0))
            assert w.flush(timeout=30)
            locker.execute("BEGIN EXCLUSIVE")
            for i in range(1, 5000):
                w.submit(_usage_event(i))
            assert w.flush(timeout=60)
            assert w.deferred >= 4000
            locker.rollback()
            assert _wait_for(lambda: _count(engine) == 5000, timeout=60)
    finally:
        locker.close()
    assert _count(engine) == 5000
    engine.dispose()


def test_an_unwritable_journal_is_one_line_of_alarm_and_memory_stays_bounded(sqlite_database, tmp_path, caplog):
    """A journal directory that cannot be written: events are held in memory and still written whenever the
    database can take them; with the database locked too, at most max_queue are held, the rest refused and
    counted; stopping is prompt and says what was lost."""
    from monitor.store import make_engine, upgrade

    upgrade(sqlite_database)
    engine = make_engine(sqlite_database, sqlite_busy_timeout_ms=20)
    directory = tmp_path / "journal"
    directory.mkdir()
    journal = Journal(directory).open()
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    journal.close()
    journal.directory = blocker / "journal"  # mkdir fails: ENOTDIR, as a read-only disk would fail it
    locker = sqlite3.connect(str(tmp_path / "monitor.db"), timeout=0)
    w = EventWriter(
        engine,
        batch_size=50,
        flush_interval_s=0.05,
        retry_backoff_s=(0.02, 0.1),
        journal=journal,
        max_queue=200,
        stop_grace_s=1,
    )
    try:
        w.start()
        for i in range(100):
            w.submit(_usage_event(i))
        assert w.flush(timeout=30)
        assert _count(engine) == 100  # written straight from memory
        locker.execute("BEGIN EXCLUSIVE")
        for i in range(100, 2100):
            w.submit(_usage_event(i))
        assert _wait_for(lambda: w.lost > 0)
        refused_while_running = w.lost
        # at most max_queue wait in memory, plus one batch in each of the writer's two threads
        assert refused_while_running >= 2000 - 200 - 2 * 50
        started = time.monotonic()
        w.close(timeout=30)
        assert time.monotonic() - started < 10
    finally:
        locker.close()
    assert _count(engine) + w.lost == 2100  # every event stored or counted as lost, none silently
    engine.dispose()
    alarms = [
        r.getMessage() for r in caplog.records if "journal" in r.getMessage() and "held in memory" in r.getMessage()
    ]
    assert len(alarms) == 1 and str(blocker) in alarms[0]
    assert all(r.exc_info is None for r in caplog.records)


def test_a_read_only_postgres_database_waits_in_the_journal_and_is_written_once_writable(pg_database, tmp_path):
    """default_transaction_read_only on the database (a failover to a standby looks like this): every write is
    refused; events wait in the journal and are stored once it takes writes again."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from monitor.store import make_engine, upgrade

    upgrade(pg_database)
    name = make_url(pg_database).database
    admin = create_engine(make_url(pg_database).set(database="postgres"), isolation_level="AUTOCOMMIT")
    engine = make_engine(pg_database, pool_pre_ping=True)
    events = [_usage_event(i) for i in range(150)]

    def read_only(on: bool) -> None:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = {"on" if on else "off"}'))
        engine.dispose()  # new connections take the setting

    try:
        with EventWriter(
            engine,
            batch_size=50,
            flush_interval_s=0.05,
            retry_backoff_s=(0.05, 0.3),
            journal=Journal(tmp_path / "j").open(),
        ) as w:
            for ev in events[:50]:
                w.submit(ev)
            assert w.flush(timeout=30)
            read_only(True)
            for ev in events[50:]:
                w.submit(ev)
            assert w.flush(timeout=30)
            assert w.deferred >= 100 and _count(engine) == 50
            read_only(False)
            assert _wait_for(lambda: _count(engine) == 150, timeout=30)
    finally:
        read_only(False)
        engine.dispose()
        admin.dispose()


def test_a_running_writer_adopts_what_a_killed_process_left_within_its_check_interval(engine, tmp_path):
    directory = tmp_path / "journal"
    with EventWriter(
        engine,
        flush_interval_s=0.05,
        retry_backoff_s=(0.05, 0.2),
        journal=Journal(directory).open(),
        orphan_check_s=0.5,
    ) as w:
        w.submit(_usage_event(0))
        assert w.flush(timeout=30)
        died = subprocess.run([sys.executable, "-c", _DIE_AFTER_APPENDING, str(directory), "20"], check=False)
        assert died.returncode == -9
        for i in range(1, 6):  # busy or idle, the writer looks
            w.submit(_usage_event(i))
            time.sleep(0.2)
        assert _wait_for(lambda: _count(engine) == 26, timeout=30)
    assert list(directory.glob("*.jnl")) == []


def test_a_spool_file_an_earlier_version_left_is_written_at_start(engine, tmp_path):
    """Upgrading from the spool to the journal loses nothing a stopped older version had spooled."""
    from monitor.spool import Spool

    spool = Spool(tmp_path / "old.spool")
    left = [_usage_event(i) for i in range(30)]
    spool.append("usage_events", [e.to_row() for e in left])
    with EventWriter(engine, journal=Journal(tmp_path / "journal").open(), legacy_spool=spool) as w:
        assert _wait_for(lambda: _count(engine) == 30)
        assert w.replayed == 30
    assert spool.pending_bytes() == 0
