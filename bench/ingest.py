"""Ingest benchmark: events per second through the batched writer into SQLite and Postgres.

Each figure is end-to-end: ``EventWriter.submit()`` of N realistic ``UsageEvent`` objects, then ``flush()``;
the clock runs from the first submit until flush() returns. Next to it, on the same run and the same rows,
the drivers on their own (the practical ceiling): sqlite3 ``executemany`` and, for Postgres, psycopg's
COPY + INSERT ... SELECT (the writer's way) and psycopg's pipelined ``executemany``. The previous writer's way
(SQLAlchemy Core ``conn.execute(insert().on_conflict_do_nothing(), dicts)``) is shown for reference. Every
measurement runs after a warmup, 3 times on a fresh table; the table shows medians.

    python bench/ingest.py                                   # 200000 events, the writer's default batch size
    python bench/ingest.py --batch-size 1000 5000 --skip-postgres
    python bench/ingest.py --sqlite-pragma cache_size=-65536   # what-if: a pragma make_engine does not set
    python bench/ingest.py --postgres-url postgresql://postgres@127.0.0.1:5432/postgres

Postgres: a scratch database ``glm_bench_ingest`` is created on the server named by --postgres-url (any
database there; it is only used to create and drop the scratch one) and dropped at the end.
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy
from sqlalchemy import Engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

from monitor.events import UsageEvent
from monitor.models import UsageEventRow
from monitor.money import Cost
from monitor.outcomes import Outcome
from monitor.store import make_engine, normalise_url, upgrade
from monitor.usage import Usage
from monitor.writer import DEFAULT_BATCH_SIZE, EventWriter, _plan

SCRATCH_DB = "glm_bench_ingest"
TABLE = UsageEventRow.__table__

APPS = ("claude-code", "cline", "ci-bot", "notebook", "support-chat")
MODELS = ("glm-4.7", "glm-4.7-flash", "glm-5", "glm-4.5-air")
PROVIDERS = ("zai", "bigmodel", "openrouter", "dashscope")
FINISH = ("stop", "stop", "stop", "length", "tool_calls")


def time_ordered_id(ts: datetime) -> str:
    """A UUIDv7-style id (48-bit Unix milliseconds, version 7, random rest): the --ordered-ids what-if."""
    value = (int(ts.timestamp() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return str(uuid.UUID(int=value))


def make_events(n: int, *, ordered_ids: bool = False) -> list[UsageEvent]:
    """``n`` realistic usage events: every token field, a Decimal cost, a UTC timestamp, varied strings.

    Event ids are ``new_event_id()``'s random UUID4s, or with ``ordered_ids`` time-ordered UUIDv7-style ones.
    """
    start = datetime(2026, 11, 22, 0, 0, tzinfo=UTC)
    out = []
    for i in range(n):
        ts = start + timedelta(milliseconds=i * 37)
        extra = {"event_id": time_ordered_id(ts)} if ordered_ids else {}
        inp = 800 + (i * 37) % 30_000
        cached = (inp * (i % 5)) // 10
        out_tokens = 50 + (i * 13) % 4000
        reasoning = out_tokens // 3 if i % 2 else 0
        cost = (Decimal(inp - cached) * Decimal("0.0000006") + Decimal(out_tokens) * Decimal("0.0000022")).quantize(
            Decimal("0.0000000001")
        ) + Decimal(cached) * Decimal("0.00000011")
        out.append(
            UsageEvent(
                ts=ts,
                source="proxy" if i % 3 else "transport",
                provider=PROVIDERS[i % len(PROVIDERS)],
                model=MODELS[i % len(MODELS)],
                vantage="tokyo-office",
                outcome=Outcome.OK,
                usage=Usage(
                    input_tokens=inp,
                    cached_input_tokens=cached,
                    cache_write_tokens=i % 200,
                    output_tokens=out_tokens,
                    reasoning_tokens=reasoning,
                    images=0,
                    model=MODELS[i % len(MODELS)],
                    request_id=uuid.uuid4().hex,
                    finish_reason=FINISH[i % len(FINISH)],
                ),
                app=APPS[i % len(APPS)],
                stream=bool(i % 2),
                http_status=200,
                latency_ms=400.0 + (i % 9000) / 3,
                ttft_ms=120.0 + (i % 700) / 7,
                cost=Cost(cost, "USD"),
                price_source="genai-prices:2026-11-01",
                **extra,
            )
        )
    return out


# --------------------------------------------------------------------------------------------- databases


@dataclass
class Postgres:
    """A scratch database on a Postgres server, created for this run and dropped afterwards."""

    admin_url: str
    url: str = ""
    version: str = ""

    def create(self) -> None:
        admin = self._admin()
        with admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{SCRATCH_DB}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{SCRATCH_DB}"')
            self.version = str(admin.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
        self.url = make_url(normalise_url(self.admin_url)).set(database=SCRATCH_DB).render_as_string(False)
        upgrade(self.url)

    def drop(self) -> None:
        with self._admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{SCRATCH_DB}" WITH (FORCE)')

    def truncate(self) -> None:
        with psycopg.connect(self.libpq_url) as conn:
            conn.execute(f"TRUNCATE {TABLE.name} RESTART IDENTITY")

    @property
    def libpq_url(self) -> str:
        return make_url(self.url).set(drivername="postgresql").render_as_string(False)

    def _admin(self) -> psycopg.Connection[Any]:
        url = make_url(normalise_url(self.admin_url)).set(drivername="postgresql").render_as_string(False)
        return psycopg.connect(url, autocommit=True, connect_timeout=5)


def fresh_sqlite(folder: Path) -> str:
    """URL of a new, migrated SQLite file."""
    path = folder / f"ingest-{uuid.uuid4().hex[:8]}.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    return url


def sqlite_engine(folder: Path, pragmas: Sequence[str] = ()) -> Engine:
    """make_engine() on a new, migrated SQLite file; ``pragmas`` (--sqlite-pragma) run after make_engine's own."""
    engine = make_engine(fresh_sqlite(folder))
    if pragmas:

        def extra(dbapi_conn: Any, _record: Any) -> None:
            for pragma in pragmas:
                dbapi_conn.execute(f"PRAGMA {pragma}")

        event.listen(engine, "connect", extra)
    return engine


def count_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {TABLE.name}")).scalar_one())


# --------------------------------------------------------------------------------------------- measurements


@dataclass
class Result:
    """One path's repeats: events per second, the process's CPU µs per event, and (writer) µs per submit()."""

    label: str
    rates: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    submit_us: list[float] = field(default_factory=list)

    def add(self, timing: Timing) -> None:
        self.rates.append(timing.rate)
        self.cpu_us.append(timing.cpu_us)
        if timing.submit_us is not None:
            self.submit_us.append(timing.submit_us)

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


@dataclass
class Timing:
    """One run: events per second (wall clock), this process's CPU µs per event, µs per submit() call."""

    rate: float
    cpu_us: float
    submit_us: float | None = None


class Clock:
    """Wall and process-CPU time of one timed region over ``n`` events."""

    def __init__(self, n: int) -> None:
        self.n = n
        gc.collect()
        self.wall0 = time.perf_counter()
        self.cpu0 = time.process_time()

    def stop(self, submit_us: float | None = None) -> Timing:
        wall = time.perf_counter() - self.wall0
        cpu = time.process_time() - self.cpu0
        return Timing(self.n / wall, cpu / self.n * 1e6, submit_us)


def run_writer(engine: Engine, events: Sequence[UsageEvent], batch_size: int) -> Timing:
    """Submit every event, then flush; the clock runs from the first submit until flush() returns."""
    with engine.connect():  # a pooled connection, as a running daemon has
        pass
    writer = EventWriter(engine, batch_size=batch_size, flush_interval_s=1.0).start()
    submit = writer.submit
    clock = Clock(len(events))
    for ev in events:
        submit(ev)
    submitted = time.perf_counter()
    if not writer.flush(timeout=900):
        raise RuntimeError("flush timed out")
    timing = clock.stop(submit_us=(submitted - clock.wall0) / len(events) * 1e6)
    writer.close()
    if writer.rejected or writer.failed_writes:
        raise RuntimeError(f"writer rejected {writer.rejected} events, {writer.failed_writes} writes failed")
    return timing


def run_core(engine: Engine, events: Sequence[UsageEvent], batch_size: int) -> Timing:
    """The previous writer's way: to_row() dicts through SQLAlchemy Core, one transaction per batch."""
    stmt: Any = (
        postgresql.insert(TABLE) if engine.dialect.name == "postgresql" else sqlite.insert(TABLE)
    ).on_conflict_do_nothing(index_elements=["event_id"])
    clock = Clock(len(events))
    for i in range(0, len(events), batch_size):
        rows = [ev.to_row() for ev in events[i : i + batch_size]]
        with engine.begin() as conn:
            conn.execute(stmt, rows)
    return clock.stop()


def prepared_params(engine: Engine, events: Sequence[UsageEvent]) -> tuple[list[tuple[Any, ...]], Any]:
    """The rows exactly as the writer binds them, and the writer's plan (its SQL) for ``engine``."""
    plan = _plan(engine, TABLE)
    return [plan.params(ev.to_row()) for ev in events], plan


def run_sqlite3(
    path: str, sql: str, params: Sequence[tuple[Any, ...]], batch_size: int, pragmas: Sequence[str] = ()
) -> Timing:
    """sqlite3 alone: executemany of ready tuples, one transaction per batch, pragmas as make_engine sets."""
    conn = sqlite3.connect(path)
    for pragma in ("journal_mode=WAL", "busy_timeout=5000", "synchronous=NORMAL", *pragmas):
        conn.execute(f"PRAGMA {pragma}")
    clock = Clock(len(params))
    for i in range(0, len(params), batch_size):
        conn.executemany(sql, params[i : i + batch_size])
        conn.commit()
    timing = clock.stop()
    conn.close()
    return timing


def run_pg_copy(pg: Postgres, plan: Any, params: Sequence[tuple[Any, ...]], batch_size: int) -> Timing:
    """psycopg alone: COPY (text, as the writer) into a temp table + INSERT ... SELECT ... ON CONFLICT, per batch."""
    with psycopg.connect(pg.libpq_url) as conn:
        conn.execute(plan.create_stage_sql)
        conn.commit()
        clock = Clock(len(params))
        for i in range(0, len(params), batch_size):
            with conn.cursor() as cur:
                with cur.copy(plan.copy_sql) as copy:
                    for p in params[i : i + batch_size]:
                        copy.write_row(p)
                cur.execute(plan.insert_from_stage_sql)
            conn.commit()
        return clock.stop()


def run_pg_executemany(pg: Postgres, plan: Any, params: Sequence[tuple[Any, ...]], batch_size: int) -> Timing:
    """psycopg alone: executemany (pipeline mode) of INSERT ... ON CONFLICT DO NOTHING, per batch."""
    with psycopg.connect(pg.libpq_url) as conn:
        clock = Clock(len(params))
        for i in range(0, len(params), batch_size):
            with conn.cursor() as cur:
                cur.executemany(plan.insert_sql, params[i : i + batch_size])
            conn.commit()
        return clock.stop()


def consume(items: Iterable[object]) -> None:
    """Run an iterator to its end, keeping nothing."""
    collections.deque(items, maxlen=0)


def per_event_us(fn: Callable[[], None], n: int, repeats: int) -> float:
    """Median µs per event of ``fn`` (which handles ``n`` events) over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(times)


def idle_cpu_s(engine: Engine, seconds: float = 1.0) -> float:
    """CPU seconds the whole process spends while a started writer sits idle for ``seconds``."""
    try:
        with EventWriter(engine, flush_interval_s=0.05):
            time.sleep(0.1)
            c0 = time.process_time()
            time.sleep(seconds)
            return time.process_time() - c0
    finally:
        engine.dispose()


# --------------------------------------------------------------------------------------------- reporting


def machine_info(pg_version: str | None) -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return [
        f"machine   : {os.cpu_count()} CPUs ({cpu}), load average {load}",
        f"python    : {platform.python_implementation()} {platform.python_version()} on {platform.system()}",
        f"sqlite    : {sqlite3.sqlite_version}",
        f"postgres  : {pg_version or 'skipped'}",
        f"libraries : SQLAlchemy {sqlalchemy.__version__}, psycopg {psycopg.__version__}",
    ]


def print_table(results: Sequence[Result], n: int, batch_size: int) -> None:
    runs = len(results[0].rates) if results else 0
    print(f"\nbatch_size={batch_size}, events={n}, median of {runs} runs (CPU = this process, not the server)")
    print(f"{'path':<62} {'events/s':>9} {'µs/event':>9} {'CPU µs/ev':>9}  runs (events/s)")
    print("-" * 124)
    for r in results:
        each = ", ".join(f"{x:,.0f}" for x in r.rates)
        cpu = statistics.median(r.cpu_us)
        print(f"{r.label:<62} {r.median:>9,.0f} {1e6 / r.median:>9.2f} {cpu:>9.2f}  {each}")
    for r in results:
        if r.submit_us:
            backend = r.label.split()[0]
            print(f"{backend}: submit() costs {statistics.median(r.submit_us):.2f} µs/event while the writer drains")


# --------------------------------------------------------------------------------------------- main


def bench_sqlite(
    folder: Path,
    events: Sequence[UsageEvent],
    warm: Sequence[UsageEvent],
    batch_size: int,
    repeats: int,
    pragmas: Sequence[str] = (),
) -> list[Result]:
    writer = Result("SQLite   EventWriter (submit .. flush)")
    core = Result("SQLite   SQLAlchemy Core executemany (previous writer)")
    raw = Result("SQLite   sqlite3 executemany, ready tuples (ceiling)")
    for rep in range(repeats + 1):
        evs = events if rep else warm  # run 0 is the warmup
        engine = sqlite_engine(folder, pragmas)
        timing = run_writer(engine, evs, batch_size)
        if count_rows(engine) != len(evs):
            raise RuntimeError("EventWriter lost or duplicated rows")
        params, plan = prepared_params(engine, evs)
        engine.dispose()
        if rep:
            writer.add(timing)

        engine = sqlite_engine(folder, pragmas)
        timing = run_core(engine, evs, batch_size)
        if count_rows(engine) != len(evs):
            raise RuntimeError("SQLAlchemy Core lost or duplicated rows")
        engine.dispose()
        if rep:
            core.add(timing)

        path = make_url(fresh_sqlite(folder)).database or ""
        timing = run_sqlite3(path, plan.insert_sql, params, batch_size, pragmas)
        if rep:
            raw.add(timing)
    return [writer, core, raw]


def bench_postgres(
    pg: Postgres, events: Sequence[UsageEvent], warm: Sequence[UsageEvent], batch_size: int, repeats: int
) -> list[Result]:
    writer = Result("Postgres EventWriter (submit .. flush)")
    core = Result("Postgres SQLAlchemy Core executemany (previous writer)")
    copy = Result("Postgres psycopg COPY + INSERT..SELECT, ready tuples (ceiling)")
    many = Result("Postgres psycopg executemany, pipeline mode")
    engine = make_engine(pg.url)
    params, plan = prepared_params(engine, events)
    for rep in range(repeats + 1):
        evs, ps = (events, params) if rep else (warm, params[: len(warm)])
        for res in (writer, core, copy, many):
            pg.truncate()
            if res is writer:
                timing = run_writer(engine, evs, batch_size)
            elif res is core:
                timing = run_core(engine, evs, batch_size)
            elif res is copy:
                timing = run_pg_copy(pg, plan, ps, batch_size)
            else:
                timing = run_pg_executemany(pg, plan, ps, batch_size)
            if count_rows(engine) != len(evs):
                raise RuntimeError(f"{res.label}: lost or duplicated rows")
            if rep:
                res.add(timing)
    engine.dispose()
    return [writer, core, copy, many]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=200_000, help="events per measurement (default 200000)")
    parser.add_argument(
        "--batch-size",
        type=int,
        nargs="+",
        default=[DEFAULT_BATCH_SIZE],
        help=f"EventWriter batch size(s); each gets its own table (default {DEFAULT_BATCH_SIZE}, the writer's own)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the median is shown")
    parser.add_argument("--warmup", type=int, default=20_000, help="events in the unrecorded warmup run")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("MONITOR_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help=f"server to create the scratch database {SCRATCH_DB} on",
    )
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument(
        "--sqlite-pragma",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra PRAGMA for every SQLite connection, after make_engine's (repeatable; a what-if for store.py)",
    )
    parser.add_argument(
        "--ordered-ids",
        action="store_true",
        help="what-if: time-ordered UUIDv7-style event ids instead of new_event_id()'s random UUID4s",
    )
    parser.add_argument("--sqlite-dir", type=Path, default=None, help="folder for the SQLite files (default: temp)")
    args = parser.parse_args(argv)

    print(f"generating {args.events:,} events ...", flush=True)
    events = make_events(args.events, ordered_ids=args.ordered_ids)
    warm = events[: min(args.warmup, args.events)]
    # The pre-made events are scaffolding a daemon does not hold: keep the collector from walking them.
    gc.freeze()

    pg: Postgres | None = None
    if not args.skip_postgres:
        pg = Postgres(args.postgres_url)
        try:
            pg.create()
        except (psycopg.Error, sqlalchemy.exc.SQLAlchemyError) as exc:
            print(f"postgres: skipped ({exc.__class__.__name__}: {str(exc).splitlines()[0]})")
            pg = None

    try:
        for line in machine_info(pg.version if pg else None):
            print(line)
        if args.ordered_ids:
            print("ids       : time-ordered UUIDv7-style (what-if; new_event_id() makes random UUID4s)")
        if args.sqlite_pragma:
            print(f"sqlite+   : extra pragmas {', '.join(args.sqlite_pragma)} (not what make_engine sets)")
        n = len(events)
        with tempfile.TemporaryDirectory(dir=args.sqlite_dir) as tmp:
            folder = Path(tmp)
            engine = make_engine(fresh_sqlite(folder))
            plan = _plan(engine, TABLE)
            engine.dispose()
            # Results are dropped as they are made, as in the writer (keeping 200k of them would time the GC).
            to_row_us = per_event_us(lambda: consume(ev.to_row() for ev in events), n, args.repeats)
            both_us = per_event_us(lambda: consume(plan.params(ev.to_row()) for ev in events), n, args.repeats)
            print(
                f"\nper event: UsageEvent.to_row() {to_row_us:.2f} µs; "
                f"binding its row for SQLite (the writer's own step) {both_us - to_row_us:.2f} µs"
            )
            idle = idle_cpu_s(make_engine(fresh_sqlite(folder)))
            print(f"idle writer: {idle:.4f} CPU seconds over 1.0 s (whole process)")
            for batch_size in args.batch_size:
                results = bench_sqlite(folder, events, warm, batch_size, args.repeats, args.sqlite_pragma)
                if pg is not None:
                    results += bench_postgres(pg, events, warm, batch_size, args.repeats)
                print_table(results, n, batch_size)
    finally:
        if pg is not None:
            pg.drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
