"""The batched writer: accepts events from any thread or asyncio task and writes them in batches.

``submit()`` never blocks and never touches the database; background threads drain the queue and write
each batch in one transaction, at the latest ``flush_interval_s`` after its first event or as soon as it
holds ``batch_size`` events. Rows are inserted with ``ON CONFLICT (event_id) DO NOTHING``, so writing a
batch twice (a retry, a replay), or an event twice within one batch, stores each event once.

Speed comes from skipping SQLAlchemy's per-row statement machinery, not its semantics: for each (dialect,
table) the INSERT is built once, and each row becomes a tuple run through the column types' own
``bind_processor(dialect)``, so values are stored exactly as ``conn.execute(insert(table), rows)`` would
store them. SQLite gets the driver's ``executemany``; Postgres gets a ``COPY`` into a per-connection
temporary table followed by one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` (bench/ingest.py and
BENCHMARKS.md show why: it is the fastest of the ways measured). The COPY is in text format on purpose:
the server parses and range-checks every value as it does for bound parameters, whereas psycopg's binary
COPY silently wraps an integer too big for an int4 column.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import Boolean, Connection, Dialect, Engine, Table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.types import TypeEngine

from monitor.errors import StoreError
from monitor.events import Event
from monitor.models import Base, UTCDateTime
from monitor.spool import Spool
from monitor.store import normalise_url

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 5000
"""Most events in one transaction (see ``EventWriter``)."""

CONFLICT_COLUMN = "event_id"
"""Every event table has a unique ``event_id``; a row whose id is already stored is skipped."""

Params = tuple[Any, ...]
_Processor = Callable[[Any], Any]


@dataclass(frozen=True, slots=True, eq=False)
class _InsertPlan:
    """How rows of one table are inserted on one dialect: the SQL, the column order and the row binder.

    ``params(row)`` gives ``row`` as a tuple in ``columns`` order with each value as its column type binds it;
    it raises ``ValueError``/``TypeError`` (from the types) for a value the column refuses and ``KeyError``
    for a column the table does not have. A missing column gets its scalar default, as in SQLAlchemy.
    """

    table: Table
    columns: tuple[str, ...]
    key_index: int
    params: Callable[[Mapping[str, Any]], Params]
    insert_sql: str
    stage_name: str
    drop_stage_sql: str
    create_stage_sql: str
    copy_sql: str
    insert_from_stage_sql: str


_plans: weakref.WeakKeyDictionary[Dialect, dict[Table, _InsertPlan]] = weakref.WeakKeyDictionary()
_plans_lock = threading.Lock()


def _build_plan(dialect: Dialect, table: Table) -> _InsertPlan:
    if dialect.name not in ("sqlite", "postgresql"):  # pragma: no cover - only SQLite and Postgres are supported
        raise NotImplementedError(f"unsupported database dialect {dialect.name!r}")
    if CONFLICT_COLUMN not in table.c:
        raise ValueError(f"table {table.name} has no {CONFLICT_COLUMN} column; the writer stores events only")
    auto = table.autoincrement_column
    cols = [c for c in table.columns if c is not auto]
    defaults: dict[str, Any] = {}
    for c in cols:
        if c.server_default is not None or (c.default is not None and not c.default.is_scalar):
            # A value SQL or a callable would have to run per row; no event table needs one.
            raise NotImplementedError(f"{table.name}.{c.name} has a non-scalar default; insert_rows cannot apply it")
        if c.default is not None:
            defaults[c.name] = c.default.arg  # type: ignore[attr-defined]
    names = tuple(c.name for c in cols)
    processors: dict[int, _Processor] = {}
    for i, c in enumerate(cols):
        impl = c.type.dialect_impl(dialect)
        process = impl.bind_processor(dialect)
        if process is not None:
            processors[i] = _faster_equivalent(impl, dialect, process)
    q = dialect.identifier_preparer
    target = q.format_table(table)
    col_list = ", ".join(q.quote(n) for n in names)
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    conflict = f"ON CONFLICT ({q.quote(CONFLICT_COLUMN)}) DO NOTHING"
    stage = q.quote(f"glm_stage_{table.name}")
    own_stage = f"pg_temp.{stage}"  # never a permanent table of the same name on the search path
    return _InsertPlan(
        table=table,
        columns=names,
        key_index=names.index(CONFLICT_COLUMN),
        params=_row_binder(table.name, names, processors, defaults),
        insert_sql=f"INSERT INTO {target} ({col_list}) VALUES ({', '.join([mark] * len(names))}) {conflict}",
        stage_name=own_stage,
        drop_stage_sql=f"DROP TABLE IF EXISTS {own_stage}",
        # ON COMMIT DELETE ROWS empties the stage at every commit, so it is made once per connection.
        create_stage_sql=(
            f"CREATE TEMPORARY TABLE {stage} ON COMMIT DELETE ROWS AS SELECT {col_list} FROM {target} WITH NO DATA"
        ),
        copy_sql=f"COPY {own_stage} ({col_list}) FROM STDIN",
        insert_from_stage_sql=f"INSERT INTO {target} ({col_list}) SELECT {col_list} FROM {own_stage} {conflict}",
    )


def _row_binder(
    table: str, names: tuple[str, ...], processors: Mapping[int, _Processor], defaults: Mapping[str, Any]
) -> Callable[[Mapping[str, Any]], Params]:
    """A function turning a row dict into its bound tuple.

    It is generated (one tuple display of ``row[name]`` lookups, each wrapped in its processor) because a
    generic loop costs about twice as much, and this runs once per event at tens of thousands of events a
    second. Rows that leave out a column or carry an unknown one take the plain path below.
    """
    known = frozenset(names)

    def slow(row: Mapping[str, Any]) -> Params:
        unknown = set(row) - known
        if unknown:
            raise KeyError(f"{table} has no column(s) {', '.join(sorted(unknown))}")
        values = [row[n] if n in row else defaults.get(n) for n in names]
        return tuple(processors[i](v) if i in processors else v for i, v in enumerate(values))

    env: dict[str, Any] = {f"p{i}": p for i, p in processors.items()}
    env["slow"] = slow
    items = [f"p{i}(row[{n!r}])" if i in processors else f"row[{n!r}]" for i, n in enumerate(names)]
    src = (
        "def params(row):\n"
        f"    if len(row) == {len(names)}:\n"
        "        try:\n"
        f"            return ({', '.join(items)},)\n"
        "        except KeyError:\n"
        "            pass\n"
        "    return slow(row)\n"
    )
    exec(src, env)
    binder: Callable[[Mapping[str, Any]], Params] = env["params"]
    return binder


_SQLITE_DATETIME_FORMAT = "%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d.%(microsecond)06d"
_DATETIME_SAMPLES = (
    None,
    datetime(2026, 11, 22, 15, 30, 1, 123456, tzinfo=timezone(timedelta(hours=9))),
    datetime(2026, 1, 1, tzinfo=UTC),
    datetime(999, 12, 31, 23, 59, 59, 1, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
)
_BOOL_SAMPLES = (True, False, None, 1, 0)


def _faster_equivalent(impl: TypeEngine[Any], dialect: Dialect, process: _Processor) -> _Processor:
    """``process``, or a faster function that binds every value exactly as it does (checked here on samples).

    Two types have one. ``UTCDateTime``: the generic chain (the decorator, then on SQLite the dict-based text
    formatting) costs about 3 µs a row on SQLite and 1.5 µs on Postgres, a third of the writer's own work per
    event. ``Boolean``: a table lookup instead of two checks. Anything the fast path does not know (a naive
    datetime, a non-boolean) goes to ``process``, so errors are SQLAlchemy's and the model's own.
    """
    fast: _Processor | None = None
    samples: tuple[Any, ...] = ()
    if type(impl) is UTCDateTime:
        samples = _DATETIME_SAMPLES
        inner = impl.impl_instance.bind_processor(dialect)
        if inner is None:
            fast = _utc_aware(process)
        elif dialect.name == "sqlite" and getattr(impl.impl_instance, "_storage_format", None) == (
            _SQLITE_DATETIME_FORMAT
        ):
            fast = _utc_sqlite_text(process)
    elif type(impl) is Boolean:
        samples = _BOOL_SAMPLES
        fast = _strict_bool(process)
    if fast is None or any(repr(fast(v)) != repr(process(v)) for v in samples):
        return process
    return fast


def _utc_aware(process: _Processor) -> _Processor:
    def utc_aware(value: datetime | None) -> datetime | None:
        if value is None or value.tzinfo is None:
            return process(value)  # type: ignore[no-any-return]  # None, or the model's "naive datetime" error
        return value.astimezone(UTC)

    return utc_aware


def _utc_sqlite_text(process: _Processor) -> _Processor:
    fmt = "%04d-%02d-%02d %02d:%02d:%02d.%06d"  # SQLite's storage format, filled from a tuple, not a dict

    def utc_text(value: datetime | None) -> str | None:
        if value is None or value.tzinfo is None:
            return process(value)  # type: ignore[no-any-return]
        v = value.astimezone(UTC)
        return fmt % (v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond)

    return utc_text


def _strict_bool(process: _Processor) -> _Processor:
    # 1 and 0 hash and compare like True and False, which SQLAlchemy accepts too.
    table = {True: process(True), False: process(False), None: None}

    def strict_bool(value: Any) -> Any:
        try:
            return table[value]
        except (KeyError, TypeError):
            return process(value)

    return strict_bool


def _plan(engine: Engine, table: Table) -> _InsertPlan:
    """The cached plan for ``table`` on ``engine``'s dialect (built on first use, after the first connect)."""
    dialect = engine.dialect
    plans = _plans.get(dialect)
    plan = plans.get(table) if plans is not None else None
    if plan is None:
        # Some dialects settle their type behaviour when they first meet the server.
        with engine.connect():
            pass
        with _plans_lock:
            plan = _plans.setdefault(dialect, {}).get(table)
            if plan is None:
                plan = _build_plan(dialect, table)
                _plans[dialect][table] = plan
    return plan


def _unique(plan: _InsertPlan, params: Iterable[Params]) -> list[Params]:
    """``params`` with each event id once (a replay inside one batch), first occurrence kept."""
    key = plan.key_index
    seen: dict[Any, Params] = {}
    for p in params:
        seen.setdefault(p[key], p)
    return list(seen.values())


def _insert(conn: Connection, plan: _InsertPlan, params: Sequence[Params], on_sent: Callable[[], None]) -> None:
    """Insert prepared ``params`` into ``plan.table`` inside ``conn``'s current transaction.

    ``on_sent`` is called once the rows have left Python (what remains is the database's own work).
    """
    params = _unique(plan, params)
    if not params:
        return
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql(plan.insert_sql, params)
        on_sent()
    else:
        _copy_insert(conn, plan, params, on_sent)


def _copy_insert(conn: Connection, plan: _InsertPlan, params: Sequence[Params], on_sent: Callable[[], None]) -> None:
    info = conn.connection.info
    key = ("glm_stage", plan.stage_name)
    try:
        if key not in info:
            # Made afresh (not "IF NOT EXISTS") so a stage left from an older table layout cannot linger.
            conn.exec_driver_sql(plan.drop_stage_sql)
            conn.exec_driver_sql(plan.create_stage_sql)
        _copy_rows(conn, plan.copy_sql, params)
        on_sent()
        conn.exec_driver_sql(plan.insert_from_stage_sql)
    except BaseException:
        # A rolled-back transaction takes a stage made in it along; the next batch makes it again.
        info.pop(key, None)
        raise
    info[key] = True


def _copy_rows(conn: Connection, copy_sql: str, params: Sequence[Params]) -> None:
    """``COPY ... FROM STDIN`` of ``params`` on the driver connection.

    COPY has no SQLAlchemy API, so driver errors are wrapped here the way SQLAlchemy wraps them (and a lost
    connection is invalidated), so callers and the retry loop see the usual SQLAlchemy exceptions.
    """
    dbapi_conn: Any = conn.connection.dbapi_connection
    dbapi = conn.dialect.loaded_dbapi
    try:
        with dbapi_conn.cursor() as cur, cur.copy(copy_sql) as copy:
            write_row = copy.write_row
            for p in params:
                write_row(p)
    except dbapi.Error as exc:
        invalidated = conn.dialect.is_disconnect(exc, dbapi_conn, None)
        if invalidated:
            conn.invalidate(exc)
        raise DBAPIError.instance(
            copy_sql, None, exc, dbapi.Error, connection_invalidated=invalidated, dialect=conn.dialect
        ) from exc


def _nothing() -> None:
    pass


def _store(
    engine: Engine,
    prepared: Mapping[_InsertPlan, Sequence[Params]],
    on_sent: Callable[[], None] = _nothing,
    *,
    lock_wait_ms: int | None = None,
) -> None:
    """Store prepared rows of every table in one transaction (``on_sent`` as for ``_insert``).

    ``lock_wait_ms`` shortens how long SQLite waits for another writer's lock in this transaction (the
    connection's own busy timeout is put back afterwards); other databases ignore it.
    """
    with engine.begin() as conn:
        restore: int | None = None
        if lock_wait_ms is not None and conn.dialect.name == "sqlite":
            restore = int(conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one())
            conn.exec_driver_sql(f"PRAGMA busy_timeout={int(lock_wait_ms)}")
        try:
            for plan, params in prepared.items():
                _insert(conn, plan, params, on_sent)
        finally:
            if restore is not None:  # a connection-level setting, outside the transaction: safe after a failure
                conn.exec_driver_sql(f"PRAGMA busy_timeout={restore}")


def insert_rows(engine: Engine, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert ``rows`` into ``table`` in one transaction, skipping rows whose ``event_id`` is already stored.

    Values are bound as the column types bind them (a naive datetime in a ``UTCDateTime`` column raises
    ``ValueError`` before anything is written).
    """
    if not rows:
        return
    plan = _plan(engine, table)
    _store(engine, {plan: [plan.params(row) for row in rows]})


def write_events(engine: Engine, events: Sequence[Event]) -> None:
    """Write ``events`` (mixed kinds allowed) in one transaction, each event at most once."""
    if not events:
        return
    by_table: dict[str, list[Params]] = {}
    plans: dict[str, _InsertPlan] = {}
    for ev in events:
        name = ev.table
        plan = plans.get(name)
        if plan is None:
            plan = plans[name] = _plan(engine, Base.metadata.tables[name])
            by_table[name] = []
        by_table[name].append(plan.params(ev.to_row()))
    _store(engine, {plans[name]: params for name, params in by_table.items()})


_GATHER_S = 0.02
"""How long the writer thread sleeps between looks at the queue while a batch is open (see ``_run``)."""
_REPLAY_LOCK_WAIT_MS = 250
"""How long a retried replay waits for another writer's SQLite lock before giving up until the next try (see
``_try_replay``)."""


class _NoDatabase(Exception):
    """The database cannot be reached to prepare a batch; with a spool, the batch is spooled instead."""


class _Flush:
    """A marker put on the queue; set once everything queued before it is written."""

    def __init__(self) -> None:
        self.done = threading.Event()


_STOP = object()


class _Job:
    """One prepared batch on its way from the writer thread to the database thread."""

    __slots__ = ("done", "params", "rows", "sent", "size")

    def __init__(
        self, params: dict[_InsertPlan, list[Params]], size: int, rows: dict[_InsertPlan, list[dict[str, Any]]]
    ) -> None:
        self.params = params
        self.rows = rows  # the same rows unbound, for the spool (kept only when there is one)
        self.size = size
        self.sent = threading.Event()  # its rows have left Python; the database is busy with them
        self.done = threading.Event()  # committed (or its refused rows rejected)


class EventWriter:
    """Queue events from anywhere; background threads write them in batches.

    Use as a context manager, or call ``start()`` and ``close()``. ``flush()`` waits until every event
    submitted before it is stored. A batch that fails to write for a passing reason (database locked or away)
    is kept and retried with backoff; it is never dropped. An event the database can never take (a naive
    timestamp, a value too long for its column) is logged with its ``event_id``, counted in ``rejected`` and
    left out, so it cannot hold up the events behind it.

    Counters (read them from any thread): ``written`` events stored (or found already stored), ``rejected``
    events left out, ``failed_writes`` write attempts that failed and were retried.

    ``batch_size`` caps one transaction. Below it, batches are cut by ``flush_interval_s``, so it matters only
    when events arrive faster than that (bursts, a replayed spool); there, each commit costs SQLite a WAL
    checkpoint and an fsync, and the random ``event_id`` index dirties pages in proportion to the rows, so
    5000-row transactions carry clearly more events per second than 1000-row ones (BENCHMARKS.md).

    With a ``spool``, nothing waits for the database: a batch the database cannot take right now (unreachable,
    locked, read-only) is appended to the spool (fsync) and the spool is replayed, in order and idempotently,
    as soon as the database answers again; batches arriving meanwhile join the spool behind it, so order is
    kept. A spool left by a crash is replayed at start. Past ``max_queue`` waiting events the writer spills
    to the spool instead of letting the queue grow. Counters ``spooled`` and ``replayed`` say what went where.

    Two threads share the work: the writer thread batches events and turns them into rows; a database thread
    writes them. Batches go through one at a time and in order, and the writer thread prepares the next batch
    only while the database finishes the previous one (its commit, Postgres' INSERT ... SELECT): then the
    database thread needs no Python, so the two overlap instead of fighting over the GIL.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        flush_interval_s: float = 1.0,
        retry_backoff_s: tuple[float, float] = (0.1, 5.0),
        spool: Spool | None = None,
        max_queue: int = 100_000,
        prepare: Callable[[], None] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if flush_interval_s <= 0:
            raise ValueError("flush_interval_s must be positive")
        self.engine = engine
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self._backoff = retry_backoff_s
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._nudge = threading.Event()  # ends the writer thread's gathering sleep for a flush or close
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._last_job: _Job | None = None
        self._thread: threading.Thread | None = None
        self._db_thread: threading.Thread | None = None
        self._closed = False
        self._plans: dict[str, _InsertPlan] = {}
        # Both threads count; the lock keeps their increments from racing.
        self._counts_lock = threading.Lock()
        self.written = 0
        self.failed_writes = 0
        self.rejected = 0
        self.spool = spool
        self.max_queue = max_queue
        self.spooled = 0
        self.replayed = 0
        self._next_replay = 0.0
        # Run before the first write or replay (migrations deferred while the database was away); raises
        # while the database is still unreachable, which counts as the database being away.
        self._prepare_step = prepare
        self._prepare_lock = threading.Lock()

    def __enter__(self) -> EventWriter:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self) -> EventWriter:
        """Start the background threads (idempotent)."""
        if self._thread is None:
            self._db_thread = threading.Thread(target=self._run_db, name="glm-monitor-writer-db", daemon=True)
            self._db_thread.start()
            self._thread = threading.Thread(target=self._run, name="glm-monitor-writer", daemon=True)
            self._thread.start()
        return self

    def submit(self, event: Event) -> None:
        """Queue one event for writing. Safe from any thread or task; never blocks."""
        if self._closed:
            raise RuntimeError("EventWriter is closed")
        self._queue.put(event)

    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything submitted before this call is written; False if ``timeout`` passed first."""
        marker = _Flush()
        self._queue.put(marker)
        self._nudge.set()  # a gathering sleep ends now, not at its next step
        return marker.done.wait(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Write what is queued, then stop the threads."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._nudge.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # --- writer thread: batching and preparing

    def _run(self) -> None:
        get, get_nowait = self._queue.get, self._queue.get_nowait
        batch: list[Event] = []
        deadline = 0.0
        step = _GATHER_S
        while True:
            if not batch:
                # Idle (nothing pending): block without a timeout, so an idle writer costs no CPU.
                if self._take(get(), batch):
                    return
                deadline = time.monotonic() + self.flush_interval_s
                step = _GATHER_S
                continue
            # A batch is open: sleep in steps and take whatever came meanwhile, rather than blocking in get(),
            # which wakes this thread for every event submitted (~15 us of the submitting request's time per
            # event, in GIL hand-overs). A look that finds nothing doubles the next step: at a trickle of events
            # a batch costs a handful of wake-ups instead of one per 20 ms (each ~0.1-0.2 ms of CPU on a VM).
            remaining = deadline - time.monotonic()
            if remaining > 0:
                # Only flush() and close() set the nudge; events never do (see above).
                self._nudge.wait(min(remaining, step))
                self._nudge.clear()
            step *= 2
            while True:
                try:
                    item = get_nowait()
                except queue.Empty:
                    break
                step = _GATHER_S
                opens = not batch
                if self._take(item, batch):
                    return
                if opens and batch:  # the previous batch was handed over: this one gets its own deadline
                    deadline = time.monotonic() + self.flush_interval_s
            if batch and time.monotonic() >= deadline:
                self._hand_over(batch)

    def _take(self, item: object, batch: list[Event]) -> bool:
        """Handle one queue item (an event, a flush marker or the stop marker); True once stopped."""
        if self.spool is not None and self._queue.qsize() > self.max_queue:
            # Falling behind: put the backlog on disk rather than in memory.
            batch.append(item)  # type: ignore[arg-type]
            marker = self._spill(batch)
            if marker is None:
                return False
            item = marker
        if type(item) is _Flush:
            self._hand_over(batch)
            self._wait_written()
            item.done.set()
        elif item is _STOP:
            self._hand_over(batch)
            self._jobs.put(None)
            if self._db_thread is not None:
                self._db_thread.join()
            return True
        else:
            batch.append(item)  # type: ignore[arg-type]
            if len(batch) >= self.batch_size:
                self._hand_over(batch)
        return False

    def _spill(self, batch: list[Event]) -> object | None:
        """Spool ``batch`` and the queue's backlog (up to a marker, which is returned for handling)."""
        assert self.spool is not None
        marker: object | None = None
        while self._queue.qsize() > self.max_queue // 2:
            item = self._queue.get()
            if type(item) is _Flush or item is _STOP:
                marker = item
                break
            batch.append(item)  # type: ignore[arg-type]
        log.warning(
            "writer fell behind by more than %d events: spooling %d to %s", self.max_queue, len(batch), self.spool.path
        )
        self._spool_events(batch)
        return marker

    def _spool_events(self, batch: list[Event]) -> None:
        """Append ``batch``'s rows to the spool after what was handed over before it (order kept); clear it."""
        self._wait_written()
        rows: dict[str, list[dict[str, Any]]] = {}
        for ev in batch:
            try:
                rows.setdefault(ev.table, []).append(ev.to_row())
            except Exception as exc:
                self._reject(getattr(ev, "table", "?"), getattr(ev, "event_id", "?"), exc)
        for table, table_rows in rows.items():
            self._append_to_spool(table, table_rows)
        batch.clear()

    def _append_to_spool(self, table: str, rows: Sequence[dict[str, Any]]) -> None:
        """Append to the spool, retrying (the local disk is our last resort, so this never gives up)."""
        assert self.spool is not None
        delay = self._backoff[0]
        while True:
            try:
                self.spool.append(table, rows)
                break
            except OSError as exc:
                delay = self._wait_to_retry(f"spooling {len(rows)} events to {self.spool.path}", exc, delay)
        with self._counts_lock:
            self.spooled += len(rows)

    def _hand_over(self, batch: list[Event]) -> None:
        """Prepare and clear ``batch``, pass it to the database thread, and wait until its rows are sent."""
        if not batch:
            return
        try:
            params, rows = self._prepare(batch)
        except _NoDatabase:
            self._spool_events(batch)
            return
        batch.clear()
        size = sum(len(p) for p in params.values())
        if not size:
            return
        job = _Job(params, size, rows)
        self._last_job = job
        self._jobs.put(job)
        job.sent.wait()

    def _wait_written(self) -> None:
        if self._last_job is not None:
            self._last_job.done.wait()

    def _prepare(
        self, batch: Sequence[Event]
    ) -> tuple[dict[_InsertPlan, list[Params]], dict[_InsertPlan, list[dict[str, Any]]]]:
        """Each event's row as bind-ready params, grouped by table (and the plain rows too when there is a
        spool); events that cannot be bound are rejected."""
        out: dict[_InsertPlan, list[Params]] = {}
        raw: dict[_InsertPlan, list[dict[str, Any]]] = {}
        keep = self.spool is not None
        plans = self._plans
        for ev in batch:
            name = ev.table
            plan = plans.get(name)
            if plan is None:
                try:
                    plan = plans[name] = self._plan(name)
                except _NoDatabase:
                    raise  # the whole batch goes to the spool
                except Exception as exc:  # e.g. an event for a table we do not have: reject it, keep the thread
                    self._reject(str(name), getattr(ev, "event_id", "?"), exc)
                    continue
            try:
                row = ev.to_row()
                params = plan.params(row)
            except Exception as exc:
                self._reject(getattr(ev, "table", "?"), getattr(ev, "event_id", "?"), exc)
                continue
            rows = out.get(plan)
            if rows is None:
                rows = out[plan] = []
                raw[plan] = []
            rows.append(params)
            if keep:
                raw[plan].append(row)
        return out, raw

    @property
    def pending_prepare(self) -> Callable[[], None] | None:
        """The ``prepare`` step while it has not succeeded yet (None once it has, or if there was none)."""
        return self._prepare_step

    def _ready(self) -> None:
        """Run the ``prepare`` step once it succeeds (it raises while the database is away)."""
        if self._prepare_step is None:
            return
        with self._prepare_lock:
            step = self._prepare_step
            if step is not None:
                step()
                self._prepare_step = None

    def _plan(self, name: str) -> _InsertPlan:
        """The plan for table ``name``; building it may meet the database once, so it retries like a write
        (with a spool it does not wait: ``_NoDatabase`` sends the batch to the spool instead)."""
        table = Base.metadata.tables[name]
        delay = self._backoff[0]
        while True:
            try:
                self._ready()
                return _plan(self.engine, table)
            except (SQLAlchemyError, StoreError) as exc:
                if self.spool is not None:
                    raise _NoDatabase from exc
                delay = self._wait_to_retry(f"connecting to prepare {name} rows", exc, delay)

    # --- database thread: storing, retrying, rejecting

    def _run_db(self) -> None:
        self._try_replay(force=True)  # a spool left by a crash goes first
        while True:
            # With a spool, wake up now and then even when idle: batches the writer thread spooled itself (the
            # database was away before any batch reached this thread) come with no job to wake us.
            try:
                job = self._jobs.get(timeout=self._backoff[1] if self.spool is not None else None)
            except queue.Empty:
                self._try_replay()
                continue
            if job is None:
                self._try_replay(force=True)
                return
            try:
                self._store_job(job)
            finally:
                job.sent.set()
                job.done.set()

    def _try_replay(self, *, force: bool = False) -> bool:
        """Replay the spool if it has anything (at most every few seconds unless ``force``); True if now empty."""
        if self.spool is None or self.spool.pending_bytes() == 0:
            return True
        if not force and time.monotonic() < self._next_replay:
            return False
        # A retry after a failure asks the database briefly: while another writer holds SQLite's lock, waiting the
        # full busy timeout on each retry would keep the database thread away from new batches, which then wait in
        # memory instead of reaching the spool. A forced replay (at start and close) waits the full timeout.
        write = partial(self._replay_rows, lock_wait_ms=None if force else _REPLAY_LOCK_WAIT_MS)
        try:
            n = self.spool.replay(write, batch_size=self.batch_size)
        except Exception as exc:
            with self._counts_lock:
                self.failed_writes += 1
            self._next_replay = time.monotonic() + self._backoff[1]
            log.warning("the database is still unavailable (%s); events stay spooled", type(exc).__name__)
            return False
        if n:
            log.info("replayed %d spooled events into the database", n)
        return True

    def _replay_rows(self, table: str, rows: list[dict[str, Any]], *, lock_wait_ms: int | None) -> None:
        self._ready()
        plan = _plan(self.engine, Base.metadata.tables[table])
        params = [plan.params(r) for r in rows]
        try:
            _store(self.engine, {plan: params}, lock_wait_ms=lock_wait_ms)
        except (DataError, IntegrityError):
            self._store_or_reject(plan, params, retry=False)
        with self._counts_lock:
            self.replayed += len(rows)
            self.written += len(rows)

    def _spool_job(self, job: _Job) -> None:
        job.sent.set()
        for plan, rows in job.rows.items():
            self._append_to_spool(plan.table.name, rows)

    def _store_job(self, job: _Job) -> None:
        """Store ``job`` in one transaction: retried until stored (or spooled), except rows the database refuses."""
        if self.spool is not None and not self._try_replay():
            self._spool_job(job)  # the spool is not empty: join it, so order is kept
            return
        delay = self._backoff[0]
        rejected = 0
        while True:
            try:
                _store(self.engine, job.params, job.sent.set)
                break
            except (DataError, IntegrityError):
                # The same rows would fail the same way again: find the ones at fault instead.
                job.sent.set()
                for plan, params in job.params.items():
                    rejected += self._store_or_reject(plan, params)
                break
            except Exception as exc:  # the thread must outlive any failure; the batch is kept
                if self.spool is not None:
                    with self._counts_lock:
                        self.failed_writes += 1
                    log.warning(
                        "writing %d events failed (%s); spooling them to %s until the database is back",
                        job.size,
                        type(exc).__name__,
                        self.spool.path,
                    )
                    self._spool_job(job)
                    self._next_replay = time.monotonic() + self._backoff[0]
                    return
                delay = self._wait_to_retry(f"writing {job.size} events", exc, delay)
        with self._counts_lock:
            self.written += job.size - rejected

    def _store_or_reject(self, plan: _InsertPlan, params: Sequence[Params], *, retry: bool = True) -> int:
        """Store ``params`` in halves until each refused row stands alone, then reject it; return the rejects.

        Passing errors (database locked or away) are retried in place with backoff, as for whole batches.
        """
        delay = self._backoff[0]
        while True:
            try:
                _store(self.engine, {plan: params})
                return 0
            except (DataError, IntegrityError) as exc:
                if len(params) == 1:
                    self._reject(plan.table.name, params[0][plan.key_index], exc)
                    return 1
                break
            except Exception as exc:  # as in _store_job
                if not retry:
                    raise
                delay = self._wait_to_retry(f"writing {len(params)} events", exc, delay)
        half = len(params) // 2
        return self._store_or_reject(plan, params[:half], retry=retry) + self._store_or_reject(
            plan, params[half:], retry=retry
        )

    # --- both threads

    def _wait_to_retry(self, what: str, exc: Exception, delay: float) -> float:
        """Count and log a failed attempt, sleep ``delay``, and return the next (doubled, capped) delay."""
        with self._counts_lock:
            self.failed_writes += 1
        # A database error is expected weather; anything else is a bug worth its traceback.
        log.error(
            "%s failed (%s); retrying in %.1fs",
            what,
            exc.__class__.__name__,
            delay,
            exc_info=not isinstance(exc, SQLAlchemyError),
        )
        time.sleep(delay)
        return min(delay * 2, self._backoff[1])

    def _reject(self, table: str, event_id: object, exc: BaseException) -> None:
        with self._counts_lock:
            self.rejected += 1
        # The first line only: SQLAlchemy appends the statement and a sample of the batch's parameters.
        reason = str(exc).splitlines()[0][:300] if str(exc) else ""
        log.error(
            "dropping %s event %s: the database cannot store it (%s: %s)",
            table,
            event_id,
            exc.__class__.__name__,
            reason,
        )


def spool_path_for(url: str, configured: str | None = None) -> Path:
    """The spool file: as configured, else beside a SQLite database file, else ``./glm-monitor.spool``."""
    if configured:
        return Path(configured).expanduser()
    parsed = make_url(normalise_url(url))
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return Path(parsed.database + ".spool")
    return Path("glm-monitor.spool").resolve()


def open_writer(
    engine: Engine,
    url: str,
    *,
    spool_path: str | None = None,
    max_queue: int = 100_000,
    prepare: Callable[[], None] | None = None,
) -> EventWriter:
    """The writer the daemon, the proxy and the transport share: batched, with its spool, started.

    ``prepare`` (``store.upgrade_or_defer``'s step) runs before the first write or replay."""
    spool = Spool(spool_path_for(url, spool_path))
    return EventWriter(engine, spool=spool, max_queue=max_queue, prepare=prepare).start()
