"""SQLAlchemy 2.0 typed tables: the only source of the schema; Alembic migrations follow it.

Every measured row carries an ``event_id`` (a UUID string made where the measurement happened) with a unique
index, so a batch replayed from the spool is recognised and written once. Times are stored as UTC.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint names keep migrations identical on SQLite and Postgres.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Money: 10 decimal places hold a single cheap request exactly (OpenRouter reports costs like 0.000007765).
MONEY = Numeric(24, 10)

# SQLite has no 64-bit autoincrement BIGINT; Postgres rows may pass 2**31 at 10M events a month.
BigId = BigInteger().with_variant(Integer(), "sqlite")
TokenCount = BigInteger().with_variant(Integer(), "sqlite")
"""A token count: 64-bit (SQLite's INTEGER already is)."""


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always UTC-aware in Python, whatever the backend keeps.

    Naive datetimes are refused on the way in: a local time stored as if it were UTC would shift every chart.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: GLM Monitor stores UTC-aware times only")
        value = value.astimezone(UTC)
        # SQLite keeps text; dropping the offset keeps rows sortable as plain strings.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base with the shared naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), Decimal: MONEY}


class _TokenColumns:
    """Token counts of one request; None means the provider did not report that figure."""

    input_tokens: Mapped[int | None] = mapped_column(TokenCount)
    cached_input_tokens: Mapped[int | None] = mapped_column(TokenCount)
    cache_write_tokens: Mapped[int | None] = mapped_column(TokenCount)
    output_tokens: Mapped[int | None] = mapped_column(TokenCount)
    reasoning_tokens: Mapped[int | None] = mapped_column(TokenCount)
    images: Mapped[int | None] = mapped_column(TokenCount)


class _CostColumns:
    """The price of one request in the provider's billing currency, and where that price came from."""

    cost_amount: Mapped[Decimal | None] = mapped_column(MONEY)
    cost_currency: Mapped[str | None] = mapped_column(String(3))
    price_source: Mapped[str | None] = mapped_column(String(120))


class _OutcomeColumns:
    """How the provider answered: our outcome, HTTP status and the provider's own business code."""

    outcome: Mapped[str] = mapped_column(String(24))
    http_status: Mapped[int | None] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(String(500))
    retry_after_s: Mapped[float | None] = mapped_column(Float)


class ProbeResultRow(_TokenColumns, _CostColumns, _OutcomeColumns, Base):
    """One probe of one target: timings, outcome, tokens and what the probe itself cost."""

    __tablename__ = "probe_results"
    __table_args__ = (Index(None, "provider", "model", "ts"), Index(None, "ts"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    ts: Mapped[datetime]
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128))
    vantage: Mapped[str] = mapped_column(String(64))
    connect_ms: Mapped[float | None] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    total_ms: Mapped[float | None] = mapped_column(Float)
    tokens_per_s: Mapped[float | None] = mapped_column(Float)
    request_id: Mapped[str | None] = mapped_column(String(128))
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    complete: Mapped[bool] = mapped_column(Boolean, default=True)


class UsageEventRow(_TokenColumns, _CostColumns, _OutcomeColumns, Base):
    """One request's usage: a probe's, or a real request seen by the transport or the proxy."""

    __tablename__ = "usage_events"
    __table_args__ = (Index(None, "ts"), Index(None, "provider", "model", "ts"), Index(None, "app", "ts"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    ts: Mapped[datetime]
    source: Mapped[str] = mapped_column(String(16))
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(128))
    vantage: Mapped[str] = mapped_column(String(64))
    app: Mapped[str | None] = mapped_column(String(64))
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    request_id: Mapped[str | None] = mapped_column(String(128))
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    complete: Mapped[bool] = mapped_column(Boolean, default=True)
    kind: Mapped[str | None] = mapped_column(String(16))  # monitor.request_kind; None: a generation


class QuotaSnapshotRow(Base):
    """One reading of one quota window, official (provider's quota API) or estimated locally."""

    __tablename__ = "quota_snapshots"
    __table_args__ = (Index(None, "plan", "ts"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    ts: Mapped[datetime]
    provider: Mapped[str] = mapped_column(String(64))
    plan: Mapped[str] = mapped_column(String(64))
    level: Mapped[str | None] = mapped_column(String(32))
    limit_type: Mapped[str] = mapped_column(String(32))
    window: Mapped[str | None] = mapped_column(String(32))
    percentage: Mapped[float | None] = mapped_column(Float)
    used: Mapped[float | None] = mapped_column(Float)
    limit: Mapped[float | None] = mapped_column(Float)
    remaining: Mapped[float | None] = mapped_column(Float)
    next_reset: Mapped[datetime | None]
    source: Mapped[str] = mapped_column(String(16))


class FxRateRow(Base):
    """How many units of ``quote`` one unit of ``base`` bought on ``day`` (e.g. USD->JPY 151.2)."""

    __tablename__ = "fx_rates"
    __table_args__ = (UniqueConstraint("day", "base", "quote"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    day: Mapped[date] = mapped_column(Date)
    base: Mapped[str] = mapped_column(String(3))
    quote: Mapped[str] = mapped_column(String(3))
    rate: Mapped[Decimal] = mapped_column(Numeric(18, 8))
    source: Mapped[str] = mapped_column(String(32))
    recorded_at: Mapped[datetime]
    note: Mapped[str | None] = mapped_column(Text)


# --- Rollups ---------------------------------------------------------------------------------------------
# Kept by monitor.rollup from the raw tables above; monitor.analytics reads only these (plus fx_rates and
# quota_snapshots). Text keys that are NULL in raw rows ("no app", "no code") are stored as "" so they can be
# part of a primary key. Hourly and daily tables share their measures (the mixins below).


class ProbeMeasures:
    """What a probe rollup row sums: outcome counts, retry-after, and per latency metric count, sum, histogram."""

    requests: Mapped[int] = mapped_column(Integer)
    ok: Mapped[int] = mapped_column(Integer)
    throttled: Mapped[int] = mapped_column(Integer)
    http_429: Mapped[int] = mapped_column(Integer)
    retry_after_count: Mapped[int] = mapped_column(Integer)
    retry_after_sum_s: Mapped[float] = mapped_column(Float)
    retry_after_max_s: Mapped[float | None] = mapped_column(Float)
    ttft_count: Mapped[int] = mapped_column(Integer)
    ttft_sum_ms: Mapped[float] = mapped_column(Float)
    ttft_hist: Mapped[bytes] = mapped_column(LargeBinary)
    total_count: Mapped[int] = mapped_column(Integer)
    total_sum_ms: Mapped[float] = mapped_column(Float)
    total_hist: Mapped[bytes] = mapped_column(LargeBinary)
    tps_count: Mapped[int] = mapped_column(Integer)
    tps_sum: Mapped[float] = mapped_column(Float)
    tps_hist: Mapped[bytes] = mapped_column(LargeBinary)


class UsageMeasures:
    """What a usage rollup row sums: request and outcome counts, tokens per type, exact costs per currency."""

    requests: Mapped[int] = mapped_column(Integer)
    ok: Mapped[int] = mapped_column(Integer)
    throttled: Mapped[int] = mapped_column(Integer)
    http_429: Mapped[int] = mapped_column(Integer)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    cached_input_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger)
    images: Mapped[int] = mapped_column(BigInteger)
    unpriced: Mapped[int] = mapped_column(Integer)
    cost_usd_e10: Mapped[int] = mapped_column(BigInteger)
    cost_cny_e10: Mapped[int] = mapped_column(BigInteger)
    cost_jpy_e10: Mapped[int] = mapped_column(BigInteger)


class OutcomeMeasures:
    """What an outcome rollup row counts: requests, and how many of them came with HTTP 429."""

    requests: Mapped[int] = mapped_column(Integer)
    http_429: Mapped[int] = mapped_column(Integer)


class ProbeHourlyRow(ProbeMeasures, Base):
    """Probes of one target (provider, model, vantage) in one UTC hour: outcomes, retry-after and latencies.

    ``*_hist`` columns are histograms on the fixed log-spaced buckets of ``monitor.rollup`` (bucket ``i`` holds
    values in ``[10**(i/100), 10**((i+1)/100))``), stored as (bucket, count) pairs of little-endian int32 in
    bucket order (``monitor.rollup.pack_hist`` / ``unpack_hist``); each histogram and its ``*_count`` / ``*_sum``
    columns cover the positive values only. ``last_*`` describe the hour's latest probe.
    """

    __tablename__ = "rollup_probe_hourly"

    hour: Mapped[datetime] = mapped_column(primary_key=True)
    provider: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    vantage: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_ts: Mapped[datetime]
    last_outcome: Mapped[str] = mapped_column(String(24))
    last_error_code: Mapped[str | None] = mapped_column(String(64))


class UsageHourlyRow(UsageMeasures, Base):
    """Requests of one (provider, model, vantage, app, source) in one UTC hour: counts, token and cost sums.

    Costs are exact integers in units of 1e-10 of their native currency (``cost_usd_e10`` = USD x 10**10), so
    sums stay exact on SQLite too. ``unpriced`` counts requests that reported usage but have no known cost.
    """

    __tablename__ = "rollup_usage_hourly"

    hour: Mapped[datetime] = mapped_column(primary_key=True)
    provider: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    vantage: Mapped[str] = mapped_column(String(64), primary_key=True)
    app: Mapped[str] = mapped_column(String(64), primary_key=True)
    source: Mapped[str] = mapped_column(String(16), primary_key=True)
    last_ts: Mapped[datetime]


class OutcomeHourlyRow(OutcomeMeasures, Base):
    """Requests per (outcome, provider code) in one UTC hour, for the 429 and error breakdowns.

    ``source`` ``probe`` rows come from ``probe_results``; ``transport`` / ``proxy`` rows from ``usage_events``
    (whose ``probe`` rows only mirror the probe results and are left out here).
    """

    __tablename__ = "rollup_outcome_hourly"

    hour: Mapped[datetime] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(16), primary_key=True)
    provider: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    vantage: Mapped[str] = mapped_column(String(64), primary_key=True)
    app: Mapped[str] = mapped_column(String(64), primary_key=True)
    outcome: Mapped[str] = mapped_column(String(24), primary_key=True)
    error_code: Mapped[str] = mapped_column(String(64), primary_key=True)


class ProbeDailyRow(ProbeMeasures, Base):
    """``rollup_probe_hourly`` summed per local ``day`` in ``zone`` (one of the zones kept, see ``RollupZoneRow``).

    A UTC hour belongs to the local day in which it starts. Columns mean what they mean in the hourly table
    (histograms merged bucket by bucket); there is no ``last_*``: the latest probe is read from the hours.
    """

    __tablename__ = "rollup_probe_daily"

    zone: Mapped[str] = mapped_column(String(64), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    provider: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    vantage: Mapped[str] = mapped_column(String(64), primary_key=True)


class UsageDailyRow(UsageMeasures, Base):
    """``rollup_usage_hourly`` summed per local ``day`` in ``zone`` and ``utc_day`` (a local day spans up to two
    UTC days, and prices change on UTC days), with the hourly table's keys and sums (no ``last_ts``)."""

    __tablename__ = "rollup_usage_daily"

    zone: Mapped[str] = mapped_column(String(64), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    utc_day: Mapped[date] = mapped_column(Date, primary_key=True)
    provider: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    vantage: Mapped[str] = mapped_column(String(64), primary_key=True)
    app: Mapped[str] = mapped_column(String(64), primary_key=True)
    source: Mapped[str] = mapped_column(String(16), primary_key=True)


class OutcomeDailyRow(OutcomeMeasures, Base):
    """``rollup_outcome_hourly`` summed per local ``day`` in ``zone``."""

    __tablename__ = "rollup_outcome_daily"

    zone: Mapped[str] = mapped_column(String(64), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    source: Mapped[str] = mapped_column(String(16), primary_key=True)
    provider: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    vantage: Mapped[str] = mapped_column(String(64), primary_key=True)
    app: Mapped[str] = mapped_column(String(64), primary_key=True)
    outcome: Mapped[str] = mapped_column(String(24), primary_key=True)
    error_code: Mapped[str] = mapped_column(String(64), primary_key=True)


class RollupZoneRow(Base):
    """A zone whose daily rollups are kept: every day of it equals the sum of its hours.

    Zones are only ever added (a refresher keeps every zone listed here, whichever zones it was asked for), so
    a reader can trust the daily tables of a listed zone.
    """

    __tablename__ = "rollup_zones"

    zone: Mapped[str] = mapped_column(String(64), primary_key=True)
    added_at: Mapped[datetime]


class RollupHourRow(Base):
    """One rolled-up hour of one raw table and how many raw rows it had when it was computed.

    Raw rows are only ever added (until pruned), so a changed count is exactly a changed hour.
    """

    __tablename__ = "rollup_hours"

    dataset: Mapped[str] = mapped_column(String(32), primary_key=True)
    hour: Mapped[datetime] = mapped_column(primary_key=True)
    raw_rows: Mapped[int] = mapped_column(Integer)
    computed_at: Mapped[datetime]


class RollupStateRow(Base):
    """Where the incremental refresh of one raw table stands (see ``monitor.rollup`` for the method).

    Rows with ``id > safe_id`` are re-examined on every refresh; ``pending_id`` (the highest id seen at
    ``pending_since``) becomes ``safe_id`` once it is old enough. Hours before ``raw_floor`` were pruned and keep
    their rollups.
    """

    __tablename__ = "rollup_state"

    dataset: Mapped[str] = mapped_column(String(32), primary_key=True)
    safe_id: Mapped[int] = mapped_column(BigInteger)
    pending_id: Mapped[int | None] = mapped_column(BigInteger)
    pending_since: Mapped[datetime | None]
    raw_floor: Mapped[datetime | None]
    updated_at: Mapped[datetime]
