"""Hourly rollups of the raw tables, kept fresh incrementally, and pruning of old raw rows.

``refresh_rollups(engine)`` (run by the daemon at start and every minute) turns ``probe_results`` and
``usage_events`` into three hourly tables (``monitor.models``): ``rollup_probe_hourly`` per (provider, model,
vantage) with outcome counts, retry-after and latency histograms; ``rollup_usage_hourly`` per (provider, model,
vantage, app, source) with counts, token sums and exact cost sums per native currency; ``rollup_outcome_hourly``
per (source, provider, model, vantage, app, outcome, provider code). ``monitor.analytics`` reads only these
and their daily sums per local day of each kept zone, which every recompute of an hour keeps in step in the
same transaction (``monitor.rollup_days``).

How an hour is kept right (late rows, replays, several daemons writing into one Postgres):

- **Hours are recomputed whole, never patched.** Recomputing hour H deletes its rollup rows and aggregates every
  raw row of H again with set-based SQL (``INSERT ... SELECT ... GROUP BY``; histogram buckets are computed in
  SQL too), so a refresh is idempotent: running it twice gives the same rollups.
- **Which hours.** Every raw row has an increasing ``id``. A refresh looks at the rows with ``id > safe_id`` and
  takes the hours of their timestamps as candidates, whatever their age (a spool replay of last week's events
  makes last week's hours candidates). ``rollup_hours`` records how many raw rows each hour had when it was
  computed; raw rows are insert-only, so a candidate hour whose count is unchanged is skipped, and one whose
  count changed is recomputed.
- **Rows committed out of id order.** On Postgres, ids are handed out at insert but rows become visible at
  commit, so a row with a smaller id can appear after a larger one was already seen. ``safe_id`` therefore
  trails: each refresh notes the highest id it saw (``pending_id``, ``pending_since``), and that id only becomes
  ``safe_id`` once ``overlap`` (default 10 minutes) has passed. Every row whose transaction lasts less than the
  overlap is seen by some refresh after it commits. The re-examined band is a few minutes of rows; the count
  check keeps it from recomputing anything that did not change. (Right after the first start the band is the
  whole table for one overlap period: a one-off catch-up cost.)
- **One refresher at a time.** On Postgres a session advisory lock lets one daemon refresh while the others skip
  that round; on SQLite the database's write lock serialises the transactions. Each batch of hours
  holding about ``BATCH_ROWS`` raw rows (within ``BATCH_SPAN``) is one transaction, so a long catch-up never holds
  SQLite's write lock for long, and the days of a batch's hours are rebuilt once per batch.
- **Pruning.** ``prune_raw`` first refreshes, then raises ``raw_floor`` to the cutoff (a whole hour) and deletes
  older raw rows. Hours before ``raw_floor`` are never recomputed again, so their rollups stay as they were; a raw
  row arriving later for such an hour (older than the retention) is counted in the report and left for the
  next prune.

Latency histograms use fixed log-spaced buckets: bucket ``i`` holds values in ``[10**(i/100), 10**((i+1)/100))``
(100 per decade, each 2.33% wide), clamped to ``[BUCKET_MIN, BUCKET_MAX]`` (1e-3 to 1e7), and are stored as
packed (bucket, count) int32 pairs (``pack_hist``), which readers decode for many rows at once. A percentile read
from them is within one bucket width (2.33%) of the exact one.
"""

from __future__ import annotations

import logging
import math
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Engine,
    Integer,
    Subquery,
    Table,
    and_,
    case,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import InstrumentedAttribute

from monitor.models import (
    OutcomeHourlyRow,
    ProbeHourlyRow,
    ProbeResultRow,
    RollupHourRow,
    RollupStateRow,
    UsageEventRow,
    UsageHourlyRow,
    UTCDateTime,
)
from monitor.outcomes import THROTTLED, Outcome
from monitor.request_kind import COUNTED_KINDS
from monitor.rollup_days import DEFAULT_DAY_ZONES, keep_zones, recompute_days

log = logging.getLogger(__name__)

__all__ = [
    "BATCH_ROWS",
    "BATCH_SPAN",
    "BUCKETS_PER_DECADE",
    "BUCKET_MAX",
    "BUCKET_MIN",
    "BUCKET_RATIO",
    "COST_SCALE",
    "DATASETS",
    "DEFAULT_OVERLAP",
    "DatasetReport",
    "PruneReport",
    "RollupReport",
    "bucket_lower_edge",
    "bucket_of",
    "floor_hour",
    "hour_runs",
    "pack_hist",
    "prune_raw",
    "rebuild_rollups",
    "refresh_rollups",
    "unpack_hist",
]

Dataset = Literal["probe_results", "usage_events"]
DATASETS: tuple[Dataset, ...] = ("probe_results", "usage_events")

BUCKETS_PER_DECADE = 100
BUCKET_MIN = -300  # 0.001 (ms or tokens/s)
BUCKET_MAX = 700  # 10,000,000
BUCKET_RATIO = 10 ** (1 / BUCKETS_PER_DECADE)
"""Upper over lower edge of every bucket: the resolution of percentiles read from rollups."""
_SCALE = BUCKETS_PER_DECADE / math.log(10)  # bucket = floor(ln(x) * _SCALE)
_MIN_EDGE = 10 ** (BUCKET_MIN / BUCKETS_PER_DECADE)
_MAX_EDGE = 10 ** (BUCKET_MAX / BUCKETS_PER_DECADE)

COST_SCALE = 10**10
"""Rollup costs are integers in 1e-10 units of their currency (the raw ``Numeric(24, 10)`` scale): exact sums."""

BATCH_ROWS = 50_000
"""Raw rows recomputed per transaction, about (a batch holds at least one hour, and hours within ``BATCH_SPAN``):
bounds how long a catch-up holds SQLite's write lock while letting sparse hours share one daily rebuild."""
BATCH_SPAN = timedelta(days=31)
"""The longest span of hours in one transaction (the days its daily rebuild reads)."""
DEFAULT_OVERLAP = timedelta(minutes=10)
"""How long a seen id waits before it becomes ``safe_id``: longer than any writer transaction plus a refresh."""

_DAY_GAP_HOURS = 48  # hours this close share one daily rebuild (the days between are rebuilt too, cheaply)
_MERGE_GAP_HOURS = 3  # candidate hours this close are checked/recomputed together (fewer statements)
_PRUNE_BATCH = 20_000
_PG_LOCK_KEY = 0x676C6D5F726F6C6C  # "glm_roll"
_THROTTLED = tuple(sorted(str(o) for o in THROTTLED))
_local_lock = threading.Lock()


def bucket_of(value: float) -> int | None:
    """The histogram bucket of a positive value (None for zero, negative or non-finite values)."""
    if not value > 0 or not math.isfinite(value):
        return None
    if value < _MIN_EDGE:
        return BUCKET_MIN
    if value >= _MAX_EDGE:
        return BUCKET_MAX
    return math.floor(math.log(value) * _SCALE)


def bucket_lower_edge(index: float) -> float:
    """The lower edge of bucket ``index`` (fractional indexes interpolate in log space)."""
    return float(10 ** (index / BUCKETS_PER_DECADE))


def pack_hist(counts: Mapping[int, int]) -> bytes:
    """A histogram ``{bucket: count}`` as stored: (bucket, count) pairs of little-endian int32, by bucket."""
    flat = [v for bucket in sorted(counts) for v in (bucket, counts[bucket])]
    return struct.pack(f"<{len(flat)}i", *flat)


def unpack_hist(data: bytes) -> dict[int, int]:
    """The ``{bucket: count}`` of a stored histogram (see ``pack_hist``)."""
    flat = struct.unpack(f"<{len(data) // 4}i", data)
    return dict(zip(flat[0::2], flat[1::2], strict=True))


def floor_hour(at: datetime) -> datetime:
    """The start of the UTC hour holding ``at`` (aware, UTC). Naive datetimes are refused."""
    if at.tzinfo is None:
        raise ValueError(f"naive datetime {at!r}: pass an aware datetime")
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


# --- reports ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DatasetReport:
    """What one refresh did for one raw table."""

    dataset: str
    scanned_after_id: int
    max_id: int
    candidate_hours: int
    recomputed_hours: int
    hours_before_retention: int
    transactions: int = 0
    """Write transactions the recompute took (batches of about ``BATCH_ROWS`` raw rows)."""


@dataclass(frozen=True, slots=True)
class RollupReport:
    """What one ``refresh_rollups`` call did; ``skipped`` says why it did nothing (another refresh was running)."""

    at: datetime
    duration_s: float
    datasets: tuple[DatasetReport, ...] = ()
    skipped: str | None = None

    @property
    def recomputed_hours(self) -> int:
        """Hours recomputed over every raw table."""
        return sum(d.recomputed_hours for d in self.datasets)


@dataclass(frozen=True, slots=True)
class PruneReport:
    """What ``prune_raw`` deleted: raw rows with a timestamp before ``cutoff``, per table."""

    cutoff: datetime
    deleted: dict[str, int]
    refresh: RollupReport


# --- SQL building blocks ------------------------------------------------------------------------------------


def _raw_table(dataset: Dataset) -> Table:
    return cast(Table, ProbeResultRow.__table__ if dataset == "probe_results" else UsageEventRow.__table__)


def _hour_expr(conn: Connection, ts: ColumnElement[Any]) -> ColumnElement[datetime]:
    """The start of ``ts``'s UTC hour, typed so it reads back as an aware datetime."""
    if conn.dialect.name == "sqlite":
        # SQLite keeps UTC times as 'YYYY-MM-DD HH:MM:SS.ffffff' text (see UTCDateTime): same format, same order.
        expr: ColumnElement[Any] = func.strftime("%Y-%m-%d %H:00:00.000000", ts)
    else:
        # date_trunc on timestamptz truncates in the session's zone; do it on the UTC wall clock instead.
        expr = func.timezone("UTC", func.date_trunc("hour", func.timezone("UTC", ts)))
    return type_coerce(expr, UTCDateTime())


def _bucket_expr(value: ColumnElement[Any]) -> ColumnElement[int]:
    """``bucket_of(value)`` in SQL, for positive values."""
    return case(
        (value < _MIN_EDGE, BUCKET_MIN),
        (value >= _MAX_EDGE, BUCKET_MAX),
        else_=sql_cast(func.floor(func.ln(value) * _SCALE), Integer),
    )


def _count_if(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.sum(case((condition, 1), else_=0))


def _safe_ln(x: Any) -> float | None:
    try:
        return math.log(float(x))
    except (TypeError, ValueError, OverflowError):
        return None


def _safe_floor(x: Any) -> int | None:
    try:
        return math.floor(float(x))
    except (TypeError, ValueError, OverflowError):
        return None


def _ensure_sqlite_math(conn: Connection) -> None:
    """Give SQLite ``ln()`` and ``floor()`` when it was built without its math functions."""
    if conn.dialect.name != "sqlite":
        return
    info = conn.connection.info
    if info.get("glm_math"):
        return
    try:
        conn.exec_driver_sql("SELECT ln(2.0), floor(1.5)").all()
    except OperationalError:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        raw.create_function("ln", 1, _safe_ln, deterministic=True)
        raw.create_function("floor", 1, _safe_floor, deterministic=True)
    info["glm_math"] = True


@contextmanager
def _exclusive(engine: Engine, *, wait: bool) -> Iterator[bool]:
    """Hold the refresh lock of this process and (on Postgres) of the database; yields False if not obtained."""
    if not _local_lock.acquire(blocking=wait):
        yield False
        return
    try:
        if engine.dialect.name != "postgresql":
            yield True
            return
        with engine.connect() as lock_conn:
            fn = "pg_advisory_lock" if wait else "pg_try_advisory_lock"
            got = lock_conn.execute(text(f"SELECT {fn}(:key)"), {"key": _PG_LOCK_KEY}).scalar()
            lock_conn.commit()
            acquired = wait or bool(got)  # pg_advisory_lock returns (void) only once it holds the lock
            try:
                yield acquired
            finally:
                if acquired:
                    lock_conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _PG_LOCK_KEY})
                    lock_conn.commit()
    finally:
        _local_lock.release()


@contextmanager
def _write_txn(engine: Engine) -> Iterator[Connection]:
    """A transaction whose reads all see one snapshot (Postgres REPEATABLE READ; SQLite's write lock)."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            yield conn


# --- state --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _State:
    safe_id: int
    pending_id: int | None
    pending_since: datetime | None
    raw_floor: datetime | None


def _load_state(engine: Engine, dataset: Dataset, now: datetime) -> _State:
    t = cast(Table, RollupStateRow.__table__)
    with engine.begin() as conn:
        row = conn.execute(
            select(t.c.safe_id, t.c.pending_id, t.c.pending_since, t.c.raw_floor).where(t.c.dataset == dataset)
        ).first()
        if row is None:
            conn.execute(
                _insert_ignore(conn, t, ["dataset"]),
                {
                    "dataset": dataset,
                    "safe_id": 0,
                    "pending_id": None,
                    "pending_since": None,
                    "raw_floor": None,
                    "updated_at": now,
                },
            )
            return _State(0, None, None, None)
    return _State(int(row.safe_id), row.pending_id, row.pending_since, row.raw_floor)


def _insert_ignore(conn: Connection, table: Table, keys: Sequence[str]) -> Any:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing(index_elements=list(keys))
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing(index_elements=list(keys))


def _advance_state(
    engine: Engine, dataset: Dataset, old: _State, max_id: int, now: datetime, overlap: timedelta
) -> None:
    """Note ``max_id`` as pending; promote the previous pending id to safe once it is ``overlap`` old."""
    if old.pending_id is None or old.pending_since is None:
        values = {"safe_id": old.safe_id, "pending_id": max_id, "pending_since": now}
    elif now - old.pending_since >= overlap:
        values = {"safe_id": max(old.safe_id, old.pending_id), "pending_id": max_id, "pending_since": now}
    else:
        return
    t = cast(Table, RollupStateRow.__table__)
    same_pending = t.c.pending_id.is_(None) if old.pending_id is None else t.c.pending_id == old.pending_id
    with engine.begin() as conn:
        # Optimistic: if another refresher moved the state meanwhile, its values are as good as ours.
        conn.execute(
            update(t)
            .where(t.c.dataset == dataset, t.c.safe_id == old.safe_id, same_pending)
            .values(**values, updated_at=now)
        )


# --- finding the hours to recompute -------------------------------------------------------------------------


def hour_runs(
    hours: Iterable[datetime], gap_hours: int = 0, max_len: int | None = None
) -> list[tuple[datetime, datetime]]:
    """Hours (any order, repeats allowed) grouped into sorted [start, end) ranges, joining gaps up to ``gap_hours``
    (0: only consecutive hours) and capping each range at ``max_len`` hours."""
    runs: list[tuple[datetime, datetime]] = []
    hour = timedelta(hours=1)
    for h in sorted(set(hours)):
        if runs:
            start, end = runs[-1]
            fits = max_len is None or (h + hour - start) <= max_len * hour
            if h <= end + gap_hours * hour and fits:
                runs[-1] = (start, h + hour)
                continue
        runs.append((h, h + hour))
    return runs


def _candidate_hours(conn: Connection, raw: Table, after_id: int, max_id: int) -> list[datetime]:
    sub = select(_hour_expr(conn, raw.c.ts).label("hour")).where(raw.c.id > after_id, raw.c.id <= max_id).subquery()
    return [h for (h,) in conn.execute(select(sub.c.hour).distinct())]


def _raw_counts(conn: Connection, raw: Table, start: datetime, end: datetime) -> dict[datetime, int]:
    sub = select(_hour_expr(conn, raw.c.ts).label("hour")).where(raw.c.ts >= start, raw.c.ts < end).subquery()
    rows = conn.execute(select(sub.c.hour, func.count()).group_by(sub.c.hour))
    return {h: int(n) for h, n in rows}


def _known_counts(conn: Connection, dataset: Dataset, start: datetime, end: datetime) -> dict[datetime, int]:
    t = cast(Table, RollupHourRow.__table__)
    rows = conn.execute(select(t.c.hour, t.c.raw_rows).where(t.c.dataset == dataset, t.c.hour >= start, t.c.hour < end))
    return {h: int(n) for h, n in rows}


# --- recomputing --------------------------------------------------------------------------------------------


def _txn_batches(rows_per_hour: Mapping[datetime, int], batch_rows: int = BATCH_ROWS) -> list[list[datetime]]:
    """The hours to recompute (keys: hour, values: its raw rows) in sorted batches of one transaction each.

    A batch closes before the hour that would take it past ``batch_rows`` raw rows (an hour with more is a batch
    of its own) or past ``BATCH_SPAN`` from its first hour, so the daily rebuild of a batch reads a bounded span."""
    batches: list[list[datetime]] = []
    rows = 0
    for h in sorted(rows_per_hour):
        n = rows_per_hour[h]
        if batches and rows + n <= batch_rows and h - batches[-1][0] < BATCH_SPAN:
            batches[-1].append(h)
            rows += n
        else:
            batches.append([h])
            rows = n
    return batches


def _recompute_hours(conn: Connection, dataset: Dataset, start: datetime, end: datetime, now: datetime) -> None:
    """Replace the rollups of every hour in [start, end) with aggregates of the raw rows, in ``conn``'s txn.

    The caller rebuilds the daily rollups of the days holding those hours in the same transaction
    (``monitor.rollup_days.recompute_days``), so hourly and daily rollups never disagree after a commit."""
    hours = cast(Table, RollupHourRow.__table__)
    outcomes = cast(Table, OutcomeHourlyRow.__table__)
    # Deleting first also takes SQLite's write lock before anything is read.
    conn.execute(delete(hours).where(hours.c.dataset == dataset, hours.c.hour >= start, hours.c.hour < end))
    main = cast(Table, (ProbeHourlyRow if dataset == "probe_results" else UsageHourlyRow).__table__)
    conn.execute(delete(main).where(main.c.hour >= start, main.c.hour < end))
    is_probe = outcomes.c.source == "probe"
    conn.execute(
        delete(outcomes).where(
            outcomes.c.hour >= start, outcomes.c.hour < end, is_probe if dataset == "probe_results" else ~is_probe
        )
    )
    _ensure_sqlite_math(conn)
    if dataset == "probe_results":
        _recompute_probes(conn, start, end)
    else:
        _recompute_usage(conn, start, end)
    raw = _raw_table(dataset)
    sub = select(_hour_expr(conn, raw.c.ts).label("hour")).where(raw.c.ts >= start, raw.c.ts < end).subquery()
    conn.execute(
        insert(hours).from_select(
            ["dataset", "hour", "raw_rows", "computed_at"],
            select(literal(dataset), sub.c.hour, func.count(), literal(now, UTCDateTime())).group_by(sub.c.hour),
        )
    )


def _outcome_rollup(conn: Connection, inner: Subquery, *, source_col: ColumnElement[str]) -> None:
    """INSERT ... SELECT the outcome breakdown of ``inner`` (which has the key columns) into its rollup."""
    t = cast(Table, OutcomeHourlyRow.__table__)
    keys = [inner.c.hour, source_col, inner.c.provider, inner.c.model, inner.c.vantage, inner.c.app]
    keys += [inner.c.outcome, inner.c.error_code]
    conn.execute(
        insert(t).from_select(
            ["hour", "source", "provider", "model", "vantage", "app", "outcome", "error_code", "requests", "http_429"],
            select(*keys, func.count(), _count_if(inner.c.http_status == 429)).group_by(*keys),
        )
    )


def counted_kind(kind: ColumnElement[str | None] | InstrumentedAttribute[str | None]) -> ColumnElement[bool]:
    """Whether a usage row's ``kind`` counts toward quotas, rates and spend (``COUNTED_KINDS``; None does)."""
    return or_(kind.is_(None), kind.in_(COUNTED_KINDS))


def _recompute_usage(conn: Connection, start: datetime, end: datetime) -> None:
    u = cast(Table, UsageEventRow.__table__)
    inner = (
        select(
            _hour_expr(conn, u.c.ts).label("hour"),
            u.c.provider,
            func.coalesce(u.c.model, "").label("model"),
            u.c.vantage,
            func.coalesce(u.c.app, "").label("app"),
            u.c.source,
            u.c.outcome,
            func.coalesce(u.c.error_code, "").label("error_code"),
            u.c.http_status,
            u.c.input_tokens,
            u.c.cached_input_tokens,
            u.c.cache_write_tokens,
            u.c.output_tokens,
            u.c.reasoning_tokens,
            u.c.images,
            u.c.cost_amount,
            u.c.cost_currency,
            u.c.ts,
        )
        # Token counts, model lists and the like are recorded but burn no quota, cost nothing and are not
        # requests for rates: the rollups (and so every figure) hold the counted kinds only.
        .where(u.c.ts >= start, u.c.ts < end, counted_kind(u.c.kind))
        .subquery()
    )
    i = inner.c
    keys = [i.hour, i.provider, i.model, i.vantage, i.app, i.source]

    def cost_units(currency: str) -> ColumnElement[int]:
        units = sql_cast(func.round(i.cost_amount * COST_SCALE), BigInteger)
        return func.sum(case((i.cost_currency == currency, units), else_=0))

    def total(col: ColumnElement[Any]) -> ColumnElement[int]:
        return func.sum(func.coalesce(col, 0))

    reported = or_(i.input_tokens.is_not(None), i.output_tokens.is_not(None), i.images.is_not(None))
    t = cast(Table, UsageHourlyRow.__table__)
    conn.execute(
        insert(t).from_select(
            [
                "hour",
                "provider",
                "model",
                "vantage",
                "app",
                "source",
                "requests",
                "ok",
                "throttled",
                "http_429",
                "input_tokens",
                "cached_input_tokens",
                "cache_write_tokens",
                "output_tokens",
                "reasoning_tokens",
                "images",
                "unpriced",
                "cost_usd_e10",
                "cost_cny_e10",
                "cost_jpy_e10",
                "last_ts",
            ],
            select(
                *keys,
                func.count(),
                _count_if(i.outcome == str(Outcome.OK)),
                _count_if(i.outcome.in_(_THROTTLED)),
                _count_if(i.http_status == 429),
                total(i.input_tokens),
                total(i.cached_input_tokens),
                total(i.cache_write_tokens),
                total(i.output_tokens),
                total(i.reasoning_tokens),
                total(i.images),
                _count_if(and_(i.cost_amount.is_(None), reported)),
                cost_units("USD"),
                cost_units("CNY"),
                cost_units("JPY"),
                func.max(i.ts),
            ).group_by(*keys),
        )
    )
    # Usage events of source "probe" mirror probe_results, whose own breakdown is the probe one.
    real = select(inner).where(inner.c.source != "probe").subquery()
    _outcome_rollup(conn, real, source_col=real.c.source)


_METRICS = (("ttft", "ttft_ms"), ("total", "total_ms"), ("tps", "tokens_per_s"))


def _recompute_probes(conn: Connection, start: datetime, end: datetime) -> None:
    p = cast(Table, ProbeResultRow.__table__)
    inner = (
        select(
            _hour_expr(conn, p.c.ts).label("hour"),
            p.c.id,
            p.c.ts,
            p.c.provider,
            p.c.model,
            p.c.vantage,
            literal("").label("app"),
            p.c.outcome,
            func.coalesce(p.c.error_code, "").label("error_code"),
            p.c.http_status,
            p.c.retry_after_s,
            p.c.ttft_ms,
            p.c.total_ms,
            p.c.tokens_per_s,
        )
        .where(p.c.ts >= start, p.c.ts < end)
        .subquery()
    )
    i = inner.c
    keys = [i.hour, i.provider, i.model, i.vantage]

    measures: list[ColumnElement[Any]] = [
        func.count().label("requests"),
        _count_if(i.outcome == str(Outcome.OK)).label("ok"),
        _count_if(i.outcome.in_(_THROTTLED)).label("throttled"),
        _count_if(i.http_status == 429).label("http_429"),
        func.count(i.retry_after_s).label("retry_after_count"),
        func.coalesce(func.sum(i.retry_after_s), 0.0).label("retry_after_sum_s"),
        func.max(i.retry_after_s).label("retry_after_max_s"),
        type_coerce(func.max(i.ts), UTCDateTime()).label("last_ts"),
    ]
    for name, column in _METRICS:
        value = i[column]
        positive = value > 0
        measures.append(_count_if(positive).label(f"{name}_count"))
        measures.append(func.coalesce(func.sum(case((positive, value))), 0.0).label(f"{name}_sum"))
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in conn.execute(select(*keys, *measures).group_by(*keys)).mappings():
        key = (r["hour"], r["provider"], r["model"], r["vantage"])
        rows[key] = {
            "hour": r["hour"],
            "provider": r["provider"],
            "model": r["model"],
            "vantage": r["vantage"],
            "requests": int(r["requests"]),
            "ok": int(r["ok"]),
            "throttled": int(r["throttled"]),
            "http_429": int(r["http_429"]),
            "retry_after_count": int(r["retry_after_count"]),
            "retry_after_sum_s": float(r["retry_after_sum_s"]),
            "retry_after_max_s": None if r["retry_after_max_s"] is None else float(r["retry_after_max_s"]),
            "ttft_count": int(r["ttft_count"]),
            "ttft_sum_ms": float(r["ttft_sum"]),
            "total_count": int(r["total_count"]),
            "total_sum_ms": float(r["total_sum"]),
            "tps_count": int(r["tps_count"]),
            "tps_sum": float(r["tps_sum"]),
            "last_ts": r["last_ts"],
        }
    if not rows:
        _outcome_rollup(conn, inner, source_col=literal("probe"))
        return

    for name, column in _METRICS:
        hists: dict[tuple[Any, ...], dict[int, int]] = {}
        value = i[column]
        sub = select(*keys, _bucket_expr(value).label("bucket")).where(value > 0).subquery()
        skeys = [sub.c.hour, sub.c.provider, sub.c.model, sub.c.vantage]
        counted = select(*skeys, sub.c.bucket, func.count().label("n")).group_by(*skeys, sub.c.bucket)
        for hit in conn.execute(counted):
            hists.setdefault((hit.hour, hit.provider, hit.model, hit.vantage), {})[int(hit.bucket)] = int(hit.n)
        for key, row in rows.items():
            row[f"{name}_hist"] = pack_hist(hists.get(key, {}))

    # The hour's latest probe (latest timestamp, then highest id) gives its last outcome.
    ranked = select(
        *keys,
        i.outcome,
        i.error_code,
        func.row_number().over(partition_by=keys, order_by=[i.ts.desc(), i.id.desc()]).label("rn"),
    ).subquery()
    for last in conn.execute(select(ranked).where(ranked.c.rn == 1)):
        row = rows[(last.hour, last.provider, last.model, last.vantage)]
        row["last_outcome"] = last.outcome
        row["last_error_code"] = last.error_code or None

    conn.execute(insert(cast(Table, ProbeHourlyRow.__table__)), list(rows.values()))
    _outcome_rollup(conn, inner, source_col=literal("probe"))


# --- public entry points ------------------------------------------------------------------------------------


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError(f"naive datetime {now!r}: pass an aware datetime")
    return now.astimezone(UTC)


def _refresh_dataset(
    engine: Engine, dataset: Dataset, now: datetime, overlap: timedelta, zones: Sequence[str], batch_rows: int
) -> DatasetReport:
    state = _load_state(engine, dataset, now)
    raw = _raw_table(dataset)
    with engine.connect() as conn:
        max_id = int(conn.execute(select(func.coalesce(func.max(raw.c.id), 0))).scalar_one())
        candidates = _candidate_hours(conn, raw, state.safe_id, max_id) if max_id > state.safe_id else []
        floor = state.raw_floor
        too_old = [h for h in candidates if floor is not None and h < floor]
        if too_old:
            log.warning(
                "new %s rows fall in %d hours before the retention cutoff %s; those hours keep their rollups",
                dataset,
                len(too_old),
                floor.isoformat() if floor else "",
            )
        changed: dict[datetime, int] = {}  # hour -> its raw rows now
        for start, end in hour_runs((h for h in candidates if floor is None or h >= floor), _MERGE_GAP_HOURS):
            actual = _raw_counts(conn, raw, start, end)
            known = _known_counts(conn, dataset, start, end)
            changed.update(
                (h, actual.get(h, 0)) for h in actual.keys() | known.keys() if actual.get(h, 0) != known.get(h, 0)
            )
    batches = _txn_batches(changed, batch_rows)
    for batch in batches:
        with _write_txn(engine) as conn:
            for start, end in hour_runs(batch):
                _recompute_hours(conn, dataset, start, end, now)
            # Days are rebuilt per stretch of hours at most two days apart, not per run of consecutive hours:
            # sparse hours (one every 12 hours for months) would otherwise cost a rebuild of every zone and tier
            # each, and hours weeks apart do not make it read the weeks between them.
            for start, end in hour_runs(batch, _DAY_GAP_HOURS):
                recompute_days(conn, dataset, zones, start, end)
    _advance_state(engine, dataset, state, max_id, now, overlap)
    return DatasetReport(dataset, state.safe_id, max_id, len(candidates), len(changed), len(too_old), len(batches))


def _refresh_locked(
    engine: Engine, now: datetime, overlap: timedelta, day_zones: Iterable[str], batch_rows: int = BATCH_ROWS
) -> RollupReport:
    started = time.monotonic()
    with _write_txn(engine) as conn:
        zones = keep_zones(conn, day_zones, now)
    reports = tuple(_refresh_dataset(engine, dataset, now, overlap, zones, batch_rows) for dataset in DATASETS)
    return RollupReport(now, time.monotonic() - started, reports)


def refresh_rollups(
    engine: Engine,
    *,
    now: datetime | None = None,
    overlap: timedelta = DEFAULT_OVERLAP,
    wait: bool = False,
    day_zones: Iterable[str] = DEFAULT_DAY_ZONES,
    batch_rows: int = BATCH_ROWS,
) -> RollupReport:
    """Bring every hourly and daily rollup up to date with the raw tables (idempotent; see the module docstring).

    ``now`` is the refresh time used for the overlap bookkeeping. ``day_zones`` are zones whose daily rollups
    must be kept (a zone not kept yet is built from the hourly rollups first; zones kept earlier stay kept, see
    ``monitor.rollup_days``). ``batch_rows`` is about how many raw rows one write transaction recomputes. When
    another refresh is running (another thread, or another daemon on the same Postgres) this returns at once with
    ``skipped`` set, unless ``wait``.
    """
    if batch_rows < 1:
        raise ValueError("batch_rows must be at least 1")
    at = _now(now)
    with _exclusive(engine, wait=wait) as acquired:
        if not acquired:
            return RollupReport(at, 0.0, skipped="another rollup refresh is running")
        return _refresh_locked(engine, at, overlap, day_zones, batch_rows)


def prune_raw(
    engine: Engine, retention_days: int, now: datetime | None = None, day_zones: Iterable[str] = DEFAULT_DAY_ZONES
) -> PruneReport:
    """Delete raw probe results and usage events older than ``retention_days`` (whole UTC hours); rollups stay.

    Rollups are refreshed first, so every raw row deleted has been rolled up; the pruned hours are then never
    recomputed (their rollups keep the totals they had).
    """
    if retention_days < 1:
        raise ValueError("retention_days must be at least 1")
    at = _now(now)
    cutoff = floor_hour(at - timedelta(days=retention_days))
    deleted: dict[str, int] = {}
    with _exclusive(engine, wait=True):
        report = _refresh_locked(engine, at, DEFAULT_OVERLAP, day_zones)
        state = cast(Table, RollupStateRow.__table__)
        with engine.begin() as conn:
            conn.execute(
                update(state)
                .where(or_(state.c.raw_floor.is_(None), state.c.raw_floor < cutoff))
                .values(raw_floor=cutoff, updated_at=at)
            )
        for dataset in DATASETS:
            raw = _raw_table(dataset)
            total = 0
            while True:
                batch = select(raw.c.id).where(raw.c.ts < cutoff).order_by(raw.c.id).limit(_PRUNE_BATCH)
                with engine.begin() as conn:
                    n = conn.execute(delete(raw).where(raw.c.id.in_(batch.scalar_subquery()))).rowcount
                total += n
                if n < _PRUNE_BATCH:
                    break
            deleted[dataset] = total
    log.info("pruned raw rows before %s: %s", cutoff.isoformat(), deleted)
    return PruneReport(cutoff, deleted, report)


def rebuild_rollups(
    engine: Engine, *, now: datetime | None = None, day_zones: Iterable[str] = DEFAULT_DAY_ZONES
) -> RollupReport:
    """Recompute every rollup from the raw rows still kept (after a fix to the rollup code, say).

    Hours before the last prune's cutoff keep their rollups: their raw rows are gone.
    """
    at = _now(now)
    with _exclusive(engine, wait=True):
        state = cast(Table, RollupStateRow.__table__)
        with engine.begin() as conn:
            floors = {d: f for d, f in conn.execute(select(state.c.dataset, state.c.raw_floor))}
            conn.execute(update(state).values(safe_id=0, pending_id=None, pending_since=None, updated_at=at))
            for dataset in DATASETS:
                floor = floors.get(dataset)
                hours = cast(Table, RollupHourRow.__table__)
                stmt = delete(hours).where(hours.c.dataset == dataset)
                conn.execute(stmt if floor is None else stmt.where(hours.c.hour >= floor))
        return _refresh_locked(engine, at, DEFAULT_OVERLAP, day_zones)
