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
from typing import TYPE_CHECKING, Any

from sqlalchemy import Boolean, Connection, Dialect, Engine, Table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError, StatementError
from sqlalchemy.types import TypeEngine

from monitor.errors import StoreError
from monitor.events import Event
from monitor.journal import DEFAULT_FSYNC_INTERVAL_S, DeadLetters, Journal, describe_os_error, journal_name
from monitor.models import Base, UTCDateTime
from monitor.spool import Spool
from monitor.store import normalise_url

if TYPE_CHECKING:
    from monitor.config import DatabaseSettings

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
_CATCH_UP_LOCK_WAIT_MS = 250
"""How long a retried catch-up waits for another writer's SQLite lock before giving up until the next try (see
``_catch_up``)."""
_ORPHAN_CHECK_S = 30.0
"""How often an idle writer looks for journal segments left by processes that are gone."""
_JOURNAL_RETRY_S = 5.0
"""How often a writer whose journal cannot be written tries it again."""
_STOP_GRACE_S = 10.0
"""How long ``close`` keeps retrying events that exist only in memory (the journal failed) before counting them
lost."""
_ALARM_EVERY_S = 60.0
"""How often a persisting problem (journal unwritable, events refused) is logged again, with its count."""

CONTENT_ERRORS: tuple[type[BaseException], ...] = (
    DataError,
    IntegrityError,
    OverflowError,
    ValueError,
    TypeError,
    UnicodeError,
)
"""What a database or driver raises for a row's content (a number too large, a string it cannot encode): the
same row fails the same way again, so it is set aside instead of retried."""


def _content_error(exc: BaseException) -> bool:
    if isinstance(exc, CONTENT_ERRORS):
        return True
    # SQLAlchemy wraps what a driver raised while binding parameters in a StatementError.
    return isinstance(exc, StatementError) and isinstance(exc.orig, CONTENT_ERRORS)


class _NoDatabase(Exception):
    """The database cannot be reached to prepare a batch."""


class _GiveUp(Exception):
    """The writer is stopping and its grace period for events held only in memory is over."""


class _Flush:
    """A marker put on the queue; set once everything queued before it is written (or safe in the journal)."""

    def __init__(self) -> None:
        self.done = threading.Event()


_STOP = object()

Item = tuple[str, dict[str, Any], int | None]
"""A queued event: its table, its row, and its journal position (None: held only in memory)."""


class _Job:
    """One prepared batch on its way from the writer thread to the database thread."""

    __slots__ = ("done", "first", "last", "params", "positions", "rows", "sent", "size")

    def __init__(self) -> None:
        self.params: dict[_InsertPlan, list[Params]] = {}
        self.rows: dict[_InsertPlan, list[dict[str, Any]]] = {}
        self.positions: dict[_InsertPlan, list[int | None]] = {}
        self.size = 0
        self.first: int | None = None  # the lowest journal position in the batch
        self.last: int | None = None  # the highest
        self.sent = threading.Event()  # its rows have left Python; the database is busy with them
        self.done = threading.Event()  # stored, set aside, or left in the journal for later

    def add(self, plan: _InsertPlan, params: Params, row: dict[str, Any], position: int | None) -> None:
        if plan not in self.params:
            self.params[plan], self.rows[plan], self.positions[plan] = [], [], []
        self.params[plan].append(params)
        self.rows[plan].append(row)
        self.positions[plan].append(position)
        self.size += 1
        if position is not None:
            if self.first is None:
                self.first = position
            self.last = position

    def after(self, position: int) -> _Job:
        """This job without the rows at or before journal ``position`` (already read back from the journal)."""
        if self.first is None or self.first > position:
            return self
        out = _Job()
        for plan, positions in self.positions.items():
            for params, row, p in zip(self.params[plan], self.rows[plan], positions, strict=True):
                if p is None or p > position:
                    out.add(plan, params, row, p)
        return out

    def in_memory_only(self) -> _Job:
        """The rows that are not in the journal."""
        out = _Job()
        for plan, positions in self.positions.items():
            for params, row, p in zip(self.params[plan], self.rows[plan], positions, strict=True):
                if p is None:
                    out.add(plan, params, row, p)
        return out


class EventWriter:
    """Queue events from anywhere; background threads write them in batches.

    Use as a context manager, or call ``start()`` and ``close()``. ``submit`` builds the event's row and, with a
    ``journal``, appends it there before returning, so a request is on disk before its client sees it complete;
    the batches to the database are cut from memory and the journal is only read back when the database was
    away, locked or slower than the events (more than ``max_queue`` waiting), and after a crash (segments of a
    dead process are adopted). ``flush()`` waits until every event submitted before it is stored or, while the
    database is away, safe in the journal. Rows whose content the database refuses (a count too large, an
    encoding) are set aside in ``dead_letters`` with the reason and counted in ``rejected``; the rest of their
    batch is stored. Without a usable journal, events wait in memory, at most ``max_queue`` of them; past that
    ``submit`` refuses them, counted in ``lost`` and logged.

    Counters (read them from any thread): ``written`` events stored (or found already stored), ``rejected``
    events set aside, ``failed_writes`` write attempts that failed, ``deferred`` events that waited in the
    journal for the database, ``replayed`` events read back from a journal or an old spool, ``held`` events
    that had only memory (the journal failed), ``lost`` events refused or given up at stop.

    ``batch_size`` caps one transaction; below it batches are cut by ``flush_interval_s``. Two threads share the
    work: the writer thread batches events and binds their rows; a database thread writes them, so the two
    overlap instead of fighting over the GIL (BENCHMARKS.md).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        flush_interval_s: float = 1.0,
        retry_backoff_s: tuple[float, float] = (0.1, 5.0),
        journal: Journal | None = None,
        dead_letters: DeadLetters | None = None,
        max_queue: int = 100_000,
        prepare: Callable[[], None] | None = None,
        legacy_spool: Spool | None = None,
        stop_grace_s: float = _STOP_GRACE_S,
        orphan_check_s: float = _ORPHAN_CHECK_S,
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
        self._stopping = threading.Event()
        self._stop_deadline = 0.0
        self._stop_grace_s = stop_grace_s
        self._orphan_check_s = orphan_check_s
        self._plans: dict[str, _InsertPlan] = {}
        self._counts_lock = threading.Lock()
        self.written = 0
        self.failed_writes = 0
        self.rejected = 0
        self.deferred = 0
        self.replayed = 0
        self.held = 0
        self.lost = 0
        self.journal = journal
        self.dead_letters = dead_letters
        self.legacy_spool = legacy_spool
        self.max_queue = max_queue
        # The database thread's view of the journal: ``_behind`` while some journaled rows were not stored from
        # memory (they are read back from the journal); rows at or before ``_caught_up_to`` were read back.
        self._behind = False
        self._caught_up_to = 0
        self._next_catch_up = 0.0
        self._next_orphan_check = 0.0
        self._outage_logged = False
        self._journal_ok = journal is not None and journal.is_open
        self._journal_problem: str | None = None
        self._next_journal_try = 0.0
        self._alarms: dict[str, float] = {}
        self._logged_reasons: set[tuple[str, str]] = set()
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
            if self.journal is not None and not self.journal.is_open:
                self._try_journal()
            self._db_thread = threading.Thread(target=self._run_db, name="glm-monitor-writer-db", daemon=True)
            self._db_thread.start()
            self._thread = threading.Thread(target=self._run, name="glm-monitor-writer", daemon=True)
            self._thread.start()
        return self

    # --- submitting (any thread)

    def submit(self, event: Event) -> None:
        """Build ``event``'s row and queue it; with a journal, the row is on disk when this returns. Never
        blocks on the database; never raises for the event's content (a row that cannot be built is set aside)."""
        if self._closed:
            raise RuntimeError("EventWriter is closed")
        try:
            table = event.table
            row = event.to_row()
        except Exception as exc:  # a bug of ours: keep what can be said, never the writer
            self._reject(getattr(event, "table", "?"), {"event_id": getattr(event, "event_id", "?")}, exc)
            return
        journal = self.journal
        if self._journal_ok and journal is not None:
            put = self._queue.put
            try:
                journal.append(table, row, lambda position: put((table, row, position)))
            except (OSError, RuntimeError) as exc:
                self._journal_failed(exc)
            else:
                if self._journal_problem is not None:  # the first append after a failure: say it is over
                    self._journal_problem = None
                    log.warning("journal %s can be written again", journal.directory)
                return
        self._hold(table, row)

    def _hold(self, table: str, row: dict[str, Any]) -> None:
        """Queue a row that only memory holds; when a journal should have taken it (it failed), at most
        ``max_queue`` wait. A writer made without a journal (tests, one-off probes) queues without a bound."""
        if self.journal is not None and self._queue.qsize() >= self.max_queue:
            with self._counts_lock:
                self.lost += 1
                lost = self.lost
            self._alarm(
                "lost",
                "refused an event (%s %s): %d events wait in memory and the journal cannot take more; %d refused "
                "so far",
                table,
                row.get("event_id"),
                self.max_queue,
                lost,
            )
            return
        with self._counts_lock:
            self.held += 1
        self._queue.put((table, row, None))

    def _journal_failed(self, exc: BaseException) -> None:
        journal = self.journal
        self._journal_ok = False
        self._next_journal_try = time.monotonic() + _JOURNAL_RETRY_S
        where = journal.directory if journal is not None else "?"
        problem = describe_os_error(exc, where) if isinstance(exc, OSError) else f"{where}: {exc}"
        first = self._journal_problem != problem
        self._journal_problem = problem
        if first:
            self._alarms.pop("journal", None)
        self._alarm("journal", "journal %s: events are held in memory, %d so far", problem, self.held)

    def _try_journal(self) -> None:
        """Open the journal (or try appending again) after it failed."""
        journal = self.journal
        if journal is None:
            return
        self._next_journal_try = time.monotonic() + _JOURNAL_RETRY_S
        try:
            if not journal.is_open:
                journal.open()
        except OSError as exc:
            self._journal_failed(exc)
            return
        self._journal_ok = True  # the next append tells whether the disk takes it again

    def _alarm(self, key: str, message: str, *args: object) -> None:
        """Log ``message`` now if ``key`` was not logged in the last ``_ALARM_EVERY_S`` (one line, no traceback)."""
        now = time.monotonic()
        if now < self._alarms.get(key, 0.0):
            return
        self._alarms[key] = now + _ALARM_EVERY_S
        log.error(message, *args)

    def flush(self, timeout: float | None = None) -> bool:
        """Block until everything submitted before this call is stored (or, while the database is away, safe
        in the journal); False if ``timeout`` passed first."""
        marker = _Flush()
        self._queue.put(marker)
        self._nudge.set()  # a gathering sleep ends now, not at its next step
        return marker.done.wait(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Write what is queued (what the database cannot take now stays in the journal), then stop."""
        if self._closed:
            return
        self._closed = True
        self._stop_deadline = time.monotonic() + self._stop_grace_s
        self._stopping.set()
        self._queue.put(_STOP)
        self._nudge.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # --- writer thread: batching and binding

    def _run(self) -> None:
        get, get_nowait = self._queue.get, self._queue.get_nowait
        batch: list[Item] = []
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

    def _take(self, item: object, batch: list[Item]) -> bool:
        """Handle one queue item (an event, a flush marker or the stop marker); True once stopped."""
        if type(item) is tuple:
            batch.append(item)
            if self._queue.qsize() > self.max_queue:
                marker = self._shed(batch)
                if marker is not None:
                    return self._take(marker, batch)
            if len(batch) >= self.batch_size:
                self._hand_over(batch)
        elif type(item) is _Flush:
            self._hand_over(batch)
            self._wait_written()
            item.done.set()
        elif item is _STOP:
            self._hand_over(batch)
            self._jobs.put(None)
            if self._db_thread is not None:
                self._db_thread.join()
            return True
        return False

    def _shed(self, batch: list[Item]) -> object | None:
        """Falling behind: let go of journaled rows in memory (the database thread reads them back from the
        journal) until half of ``max_queue`` is left; return a marker met on the way, for handling."""
        self._behind = True  # before any later job reaches the database thread
        shed = sum(1 for item in batch if item[2] is not None)
        batch[:] = [item for item in batch if item[2] is None]
        marker: object | None = None
        while self._queue.qsize() > self.max_queue // 2:
            item = self._queue.get()
            if type(item) is not tuple:
                marker = item
                break
            if item[2] is None:
                batch.append(item)
            else:
                shed += 1
        with self._counts_lock:
            self.deferred += shed
        log.warning(
            "the writer fell behind by more than %d events: %d wait in the journal and are read back from it",
            self.max_queue,
            shed,
        )
        return marker

    def _hand_over(self, batch: list[Item]) -> None:
        """Bind and clear ``batch``, pass it to the database thread, and wait until its rows are sent."""
        while batch:
            chunk = batch[: self.batch_size]
            del batch[: self.batch_size]
            job = self._prepare(chunk)
            if not job.size:
                continue
            self._last_job = job
            self._jobs.put(job)
            job.sent.wait()

    def _wait_written(self) -> None:
        if self._last_job is not None:
            self._last_job.done.wait()

    def _prepare(self, batch: Sequence[Item]) -> _Job:
        """Each row as bind-ready params, grouped by table; rows that cannot be bound are set aside. While the
        database cannot be reached to build a table's plan, journaled rows are left to the journal."""
        job = _Job()
        plans = self._plans
        for table, row, position in batch:
            plan = plans.get(table)
            if plan is None:
                try:
                    plan = plans[table] = self._plan(table, in_journal=position is not None)
                except _NoDatabase:
                    self._behind = True
                    with self._counts_lock:
                        self.deferred += 1
                    continue
                except _GiveUp:
                    self._count_lost(1, "the database was unavailable at stop")
                    continue
                except Exception as exc:  # e.g. an event for a table we do not have
                    self._reject(table, row, exc)
                    continue
            try:
                params = plan.params(row)
            except Exception as exc:
                self._reject(table, row, exc)
                continue
            job.add(plan, params, row, position)
        return job

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

    def _plan(self, name: str, *, in_journal: bool) -> _InsertPlan:
        """The plan for table ``name``; building it may meet the database once. A row in the journal does not
        wait for it (``_NoDatabase``); a row only in memory retries with backoff."""
        table = Base.metadata.tables[name]
        delay = self._backoff[0]
        while True:
            try:
                self._ready()
                return _plan(self.engine, table)
            except (SQLAlchemyError, StoreError) as exc:
                if in_journal:
                    raise _NoDatabase from exc
                delay = self._wait_to_retry(f"connecting to prepare {name} rows", exc, delay)

    # --- database thread: storing, catching up, setting aside

    def _run_db(self) -> None:
        self._start_up()
        while True:
            try:
                job = self._jobs.get(timeout=self._backoff[1] if self.journal is not None else None)
            except queue.Empty:
                try:
                    self._idle()
                except Exception:  # a bug of ours: keep the thread
                    log.exception("the writer's housekeeping failed")
                continue
            if job is None:
                self._shut_down()
                return
            try:
                self._store_job(job)
            except _GiveUp:
                self._count_lost(job.in_memory_only().size, "the database was unavailable at stop")
            except Exception:  # a bug of ours: the thread must outlive it; journaled rows are read back later
                log.exception("the writer failed storing %d events; they are read back from the journal", job.size)
                self._behind = job.last is not None
            finally:
                job.sent.set()
                job.done.set()

    def _start_up(self) -> None:
        """Replay what earlier runs left: an old-style spool, journal segments of processes that are gone."""
        if self.legacy_spool is not None and self.legacy_spool.pending_bytes():
            try:
                n = self.legacy_spool.replay(partial(self._replay_rows, lock_wait_ms=None), batch_size=self.batch_size)
                log.info("replayed %d events from the spool %s", n, self.legacy_spool.path)
            except Exception as exc:
                log.warning("the spool %s waits for the database (%s)", self.legacy_spool.path, _why(exc))
        self._adopt_orphans(force=True)

    def _idle(self) -> None:
        if self.journal is not None and not self._journal_ok and time.monotonic() >= self._next_journal_try:
            self._try_journal()
        if self._behind:
            self._catch_up()
        self._adopt_orphans()

    def _adopt_orphans(self, *, force: bool = False) -> None:
        journal = self.journal
        if journal is None or (not force and time.monotonic() < self._next_orphan_check):
            return
        self._next_orphan_check = time.monotonic() + self._orphan_check_s
        write = partial(self._replay_rows, lock_wait_ms=None if force else _CATCH_UP_LOCK_WAIT_MS)
        try:
            n = journal.adopt_orphans(write, batch_size=self.batch_size)
        except Exception as exc:
            log.warning("events a stopped process left in the journal wait for the database (%s)", _why(exc))
            return
        if n:
            log.info("replayed %d events a stopped process had left in the journal", n)

    def _shut_down(self) -> None:
        if self._behind:
            self._catch_up(force=True)
        journal = self.journal
        if journal is None:
            return
        left = sum(1 for _ in journal.unstored()) if self._behind else 0
        if not journal.close() and left:
            log.warning(
                "the database is unavailable: %d events are left in the journal %s and are written at the next start",
                left,
                journal.directory,
            )

    def _store_job(self, job: _Job) -> None:
        """Store ``job`` in one transaction; while the database is away its journaled rows wait in the journal."""
        if self.journal is not None and not self._journal_ok and time.monotonic() >= self._next_journal_try:
            self._try_journal()  # a busy writer is never idle: try the journal again here too
        self._adopt_orphans()  # likewise for files a dead process left (at most every orphan_check_s)
        if self._behind and not self._catch_up():
            self._defer(job)
            return
        if self._caught_up_to:
            job = job.after(self._caught_up_to)
            if not job.size:
                return
        try:
            _store(self.engine, job.params, job.sent.set)
        except Exception as exc:
            job.sent.set()
            if _content_error(exc):
                rejected = sum(self._store_or_reject(p, job.params[p], job.rows[p]) for p in job.params)
                self._stored(job, job.size - rejected)
                return
            self._database_failed(exc)
            if job.last is not None:
                self._behind = True
                self._next_catch_up = time.monotonic() + self._backoff[0]
            self._defer(job)
            return
        self._stored(job, job.size)

    def _stored(self, job: _Job, written: int) -> None:
        with self._counts_lock:
            self.written += written
        if self._outage_logged:
            self._outage_logged = False
            log.warning("the database is writable again")
        if job.last is not None and self.journal is not None and not self._behind:
            self.journal.stored(job.last)

    def _defer(self, job: _Job) -> None:
        """Leave the journaled rows of ``job`` in the journal; store the rest in place, retrying."""
        memory = job.in_memory_only()
        with self._counts_lock:
            self.deferred += job.size - memory.size
        for plan, params in memory.params.items():
            self._store_in_place(plan, params, memory.rows[plan])

    def _store_in_place(self, plan: _InsertPlan, params: list[Params], rows: list[dict[str, Any]]) -> None:
        """Store rows that only memory holds: retried with backoff until stored (``_GiveUp`` at stop)."""
        delay = self._backoff[0]
        while True:
            try:
                rejected = self._store_or_reject(plan, params, rows, retry=False)
                with self._counts_lock:
                    self.written += len(params) - rejected
                return
            except _GiveUp:
                raise
            except Exception as exc:
                delay = self._wait_to_retry(f"writing {len(params)} events held in memory", exc, delay)

    def _database_failed(self, exc: BaseException) -> None:
        with self._counts_lock:
            self.failed_writes += 1
        if not self._outage_logged:
            self._outage_logged = True
            where = f"the journal {self.journal.directory}" if self._journal_ok and self.journal else "memory"
            log.warning("the database is unavailable (%s): events wait in %s until it is back", _why(exc), where)

    def _catch_up(self, *, force: bool = False) -> bool:
        """Read back and store this process's journaled rows not stored yet; True once nothing is behind."""
        journal = self.journal
        if journal is None:
            self._behind = False
            return True
        if not force and time.monotonic() < self._next_catch_up:
            return False
        write = partial(self._replay_rows, lock_wait_ms=None if force else _CATCH_UP_LOCK_WAIT_MS)
        table: str | None = None
        rows: list[dict[str, Any]] = []
        last = reached = self._caught_up_to
        total = 0
        try:
            for position, t, row in journal.unstored():
                if rows and (t != table or len(rows) >= self.batch_size):
                    assert table is not None
                    write(table, rows)
                    total += len(rows)
                    journal.stored(last)
                    reached = last
                    rows = []
                table = t
                rows.append(row)
                last = position
            if rows:
                assert table is not None
                write(table, rows)
                total += len(rows)
                journal.stored(last)
                reached = last
        except Exception as exc:
            self._caught_up_to = max(self._caught_up_to, reached)
            self._database_failed(exc)
            self._next_catch_up = time.monotonic() + self._backoff[1]
            return False
        self._caught_up_to = max(self._caught_up_to, last)
        self._behind = False
        if total:
            log.info("read %d events back from the journal into the database", total)
        if self._outage_logged:
            self._outage_logged = False
            log.warning("the database is writable again")
        return True

    def _replay_rows(self, table: str, rows: list[dict[str, Any]], *, lock_wait_ms: int | None) -> None:
        """Store rows read back from a journal or spool (content refused: set aside); raises while the
        database is unavailable."""
        self._ready()
        plan = _plan(self.engine, Base.metadata.tables[table])
        params: list[Params] = []
        kept: list[dict[str, Any]] = []
        for row in rows:
            try:
                params.append(plan.params(row))
                kept.append(row)
            except Exception as exc:
                self._reject(table, row, exc)
        rejected = 0
        try:
            _store(self.engine, {plan: params}, lock_wait_ms=lock_wait_ms)
        except Exception as exc:
            if not _content_error(exc):
                raise
            rejected = self._store_or_reject(plan, params, kept, retry=False)
        with self._counts_lock:
            self.replayed += len(rows)
            self.written += len(params) - rejected

    def _store_or_reject(
        self, plan: _InsertPlan, params: Sequence[Params], rows: Sequence[dict[str, Any]], *, retry: bool = True
    ) -> int:
        """Store ``params`` in halves until each refused row stands alone, then set it aside; return how many.

        Passing errors (database locked or away) are retried in place with backoff when ``retry``, else raised.
        """
        delay = self._backoff[0]
        while True:
            try:
                _store(self.engine, {plan: params})
                return 0
            except Exception as exc:
                if _content_error(exc):
                    if len(params) == 1:
                        self._reject(plan.table.name, rows[0], exc)
                        return 1
                    break
                if not retry:
                    raise
                delay = self._wait_to_retry(f"writing {len(params)} events", exc, delay)
        half = len(params) // 2
        return self._store_or_reject(plan, params[:half], rows[:half], retry=retry) + self._store_or_reject(
            plan, params[half:], rows[half:], retry=retry
        )

    # --- both threads

    def _wait_to_retry(self, what: str, exc: Exception, delay: float) -> float:
        """Count and log a failed attempt, sleep ``delay``, and return the next (doubled, capped) delay; raise
        ``_GiveUp`` once the writer is stopping and its grace period is over."""
        with self._counts_lock:
            self.failed_writes += 1
        if self._stopping.is_set() and time.monotonic() >= self._stop_deadline:
            raise _GiveUp from exc
        # A database error is expected weather, logged in one line once a minute; anything else is a bug worth
        # its traceback.
        if isinstance(exc, (SQLAlchemyError, StoreError)):
            self._alarm(
                f"retry:{type(exc).__name__}",
                "%s failed (%s); retrying every %.1fs at most",
                what,
                _why(exc),
                self._backoff[1],
            )
        else:
            log.error("%s failed (%s); retrying in %.1fs", what, _why(exc), delay, exc_info=True)
        time.sleep(delay)
        return min(delay * 2, self._backoff[1])

    def _count_lost(self, n: int, why: str) -> None:
        if not n:
            return
        with self._counts_lock:
            self.lost += n
        log.error("%d events held only in memory could not be written: %s", n, why)

    def _reject(self, table: str, row: dict[str, Any], exc: BaseException) -> None:
        """Set a row aside in the dead-letter file with the reason; logged once per table and kind of error."""
        with self._counts_lock:
            self.rejected += 1
        # The first line only: SQLAlchemy appends the statement and a sample of the batch's parameters.
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        kept = self.dead_letters is not None and self.dead_letters.add(table, row, reason)
        key = (table, type(exc).__name__)
        if key in self._logged_reasons and kept:
            return
        self._logged_reasons.add(key)
        where = f"set aside in {self.dead_letters.path}" if kept and self.dead_letters else "dropped"
        log.error(
            "a %s event (%s) cannot be stored: %s; %s (further rows refused for the same reason are set aside "
            "without a message)",
            table,
            row.get("event_id"),
            reason,
            where,
        )


def _why(exc: BaseException) -> str:
    """A one-line reason: the exception type and the first line of its message, without statement or params."""
    orig = getattr(exc, "orig", None)
    shown = orig if isinstance(orig, BaseException) else exc
    text = str(shown).strip().splitlines()[0][:200] if str(shown).strip() else ""
    return f"{type(shown).__name__}: {text}" if text else type(shown).__name__


def _beside_database(url: str, configured: str | None, suffix: str, default: str) -> Path:
    """As configured, else beside a SQLite database file (``<file><suffix>``), else ``./<default>``."""
    if configured:
        return Path(configured).expanduser()
    parsed = make_url(normalise_url(url))
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return Path(parsed.database + suffix)
    return Path(default).resolve()


def journal_dir_for(url: str, configured: str | None = None) -> Path:
    """The journal directory: as configured, else beside a SQLite database file, else ``./glm-monitor.journal``."""
    return _beside_database(url, configured, ".journal", "glm-monitor.journal")


def spool_path_for(url: str, configured: str | None = None) -> Path:
    """Where versions before the journal kept their spool file (replayed once at start if one is left)."""
    return _beside_database(url, configured, ".spool", "glm-monitor.spool")


def writer_for(engine: Engine, db: DatabaseSettings, prepare: Callable[[], None] | None = None) -> EventWriter:
    """``open_writer`` with everything ``[database]`` says (journal, old spool, queue bound, fsync interval)."""
    return open_writer(
        engine,
        db.url,
        journal_dir=db.journal_dir,
        spool_path=db.spool_path,
        max_queue=db.max_queue,
        fsync_interval_s=db.fsync_interval,
        prepare=prepare,
    )


def open_writer(
    engine: Engine,
    url: str,
    *,
    journal_dir: str | None = None,
    spool_path: str | None = None,
    max_queue: int = 100_000,
    fsync_interval_s: float = DEFAULT_FSYNC_INTERVAL_S,
    prepare: Callable[[], None] | None = None,
) -> EventWriter:
    """The writer the daemon, the proxy and the transport use: batched, journaled, started.

    ``prepare`` (``store.upgrade_or_defer``'s step) runs before the first write or replay. A journal directory
    that cannot be written is logged in one line and retried; events wait in memory meanwhile."""
    directory = journal_dir_for(url, journal_dir)
    name = journal_name(normalise_url(url))
    journal = Journal(directory, name=name, fsync_interval_s=fsync_interval_s)
    spool = spool_path_for(url, spool_path)
    return EventWriter(
        engine,
        journal=journal,
        dead_letters=DeadLetters(directory, name),
        max_queue=max_queue,
        prepare=prepare,
        legacy_spool=Spool(spool) if spool.exists() else None,
    ).start()
