"""Quota burn: how much of each configured plan is used, how fast it burns and when it runs out.

``quota_statuses(engine, settings)`` returns one ``QuotaStatus`` per plan window, in config order. Where the
provider's own figure exists (a Coding Plan snapshot stored by ``monitor.quota_poller`` less than
``OFFICIAL_MAX_AGE`` old, whose window has not reset since) it wins over the local estimate;
``QuotaStatus.source`` says which.

What is read from where. Every figure comes from SQL aggregates, never from rows loaded one by one, and every
window (minute, 5 hours, day, week, month, balance, and each burn window) is cut the same way (``_Ctx``):

- Its whole UTC hours come from the hourly rollups (``monitor.rollup``) wherever they are current: the hour was
  pruned (only its rollups remain), or none of its raw rows is newer than the refresh's settled id
  (``rollup_state.safe_id``), or ``rollup_hours`` counted as many raw rows as it has now. Requests and tokens
  come from ``rollup_usage_hourly`` per hour and model (refusals left out: ``requests - throttled`` less the
  quota_exhausted, auth_error and client_error counts of ``rollup_outcome_hourly``); money from its cost sums.
- The raw ``usage_events`` answer the rest: the partial hours at both ends (COUNT/SUM per model and 15-minute
  bucket, or per hour and currency), the hours the rollup has not caught up with (the last minutes, a late
  replay), and the few hours the rollups cannot split exactly: an hour whose probe rows in scope have outcomes
  other than ok and throttled (``rollup_outcome_hourly`` leaves usage rows of source ``probe`` out, so it
  cannot tell whether they were refusals), the tokens of an hour with refusals in scope (the rollups sum every
  request's tokens), and, for a Coding Plan's peak multiplier, a UTC hour that straddles the start or end of
  the peak hours (a zone whose offset is not whole hours).
- Exact times (the first request after the previous 5-hour or weekly window ended, the oldest request of the
  last minute) come from one ``ORDER BY ts LIMIT 1`` per model on the (provider, model, ts) index inside the
  hour the rollups point to (or inside the raw ranges before it).

So a call costs the rollup rows of its windows plus a few hours of raw rows, whatever the raw volume, and
agrees with the raw rows to the request and to 1e-10 of a currency. (Until the refresh has settled, e.g. in the
first overlap period after the first refresh, the rows above ``safe_id`` are many: the currency check then
counts the raw rows of each window, an index-only scan, as a catch-up cost.) Hours before the last prune
(``raw_floor``) have only their rollups, which are taken as they are: such an hour's start stands for its
first request, its few probe errors of unknown kind and refused requests' tokens count as used, and a peak
multiplier applies to it as at its start.

Windows and burn rates, per kind (the choices the providers leave open):

- Free tier (requests of the plan's provider, every source, refusals such as 1302/1303/1304 not counted;
  only the plan's ``models`` when given, else the models of targets that name the plan, when any do):
  per minute: rolling 60 s; burn = that minute's requests x 60; it "runs out" when the minute is full and
  frees up when the oldest request in it is a minute old.
  per 5 hours: starts at the first request after the previous window ended (as the simulator models it).
  per day: the provider's calendar day: midnight China Standard Time (UTC+8) for Zhipu, Z.ai and DashScope
  (Zhipu's daily limits reset at 00:00 Beijing time, as the simulator's 1304 does), UTC for OpenRouter.
  Burn of the 5-hour and daily windows: requests of the last hour.
- Coding Plan (requests = prompts, or input + output tokens, on the plan's provider, captured by the
  transport or the proxy, refusals not counted): each request weighs ``model_weights[model]`` (1 when absent)
  and x ``peak_multiplier`` when its time in ``peak_zone`` falls in ``peak_hours``. The 5-hour window starts at
  the first request after the previous one ended; the weekly one too, unless an official weekly reset time is
  known, which pins the weekly windows to that time (Z.ai's weekly reset shares the clock time of the monthly
  one: it runs from the subscription's start, not from first use). Burn: the weighted usage of the last hour;
  the projection assumes the last hour's request rate goes on, multiplied again as it enters or leaves peak
  hours.
- Prepaid balance: ``balance`` at the start of ``as_of`` (display zone) plus top-ups dated from ``as_of`` to
  today, drawn down by the priced usage of the provider since then, converted to the balance's currency with
  the rate of each day. No reset. Burn: spend of the last 24 hours.
- Monthly budget: spend of the calendar month in the display zone (all providers, or the listed ones),
  converted to the budget's currency day by day with ``fx.RateBook``. Resets at the next month's start.
  Burn: spend of the last 24 hours.

A burn window reaching back before the first stored event is shortened to the time since that event (a
fresh install would otherwise look idle), but never below a twelfth of the window (one early event would
otherwise look like a flood). Quantities are ``Decimal`` (money must be; counts are exact in it too); ``share``
is a float ratio, not clamped for estimates (an overdrawn balance shows more than 1), clamped to 0..1 for
official percentages outside 0-100 (the raw value is stored and named in ``notes``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Literal, cast
from zoneinfo import ZoneInfo

from sqlalchemy import BigInteger, ColumnElement, Connection, Engine, Integer, and_, case, extract, func, or_, select
from sqlalchemy import cast as sql_cast

from monitor.config import CodingPlan, FreeTierPlan, MonthlyBudget, PrepaidPlan, Settings
from monitor.fx import RateBook, default_rates
from monitor.models import (
    OutcomeHourlyRow,
    QuotaSnapshotRow,
    RollupHourRow,
    RollupStateRow,
    UsageEventRow,
    UsageHourlyRow,
)
from monitor.money import CURRENCIES, Cost, Currency
from monitor.outcomes import THROTTLED, Outcome
from monitor.quota_poller import TIME_LIMIT, TOKENS_LIMIT, WINDOW_5H, WINDOW_MONTH, WINDOW_WEEK, plan_key
from monitor.rollup import COST_SCALE, counted_kind, floor_hour, hour_runs

__all__ = [
    "OFFICIAL_MAX_AGE",
    "PlanKind",
    "QuotaSource",
    "QuotaStatus",
    "quota_statuses",
]

PlanKind = Literal["free_tier", "coding_plan", "prepaid", "monthly_budget"]
QuotaSource = Literal["official", "estimate"]

OFFICIAL_MAX_AGE = timedelta(minutes=15)
"""An official snapshot older than this no longer wins over the local estimate."""

REQUEST_BURN_WINDOW = timedelta(hours=1)
MONEY_BURN_WINDOW = timedelta(hours=24)
FIVE_HOURS = timedelta(hours=5)
WEEK = timedelta(weeks=1)
DAILY_RESET_ZONE: dict[str, str] = {"openrouter": "UTC"}
DEFAULT_DAILY_RESET_ZONE = "Asia/Shanghai"
CODING_SOURCES = ("transport", "proxy")
REFUSED_OUTCOMES = tuple(
    str(o)
    for o in (
        Outcome.RATE_LIMITED,
        Outcome.CONCURRENCY_LIMITED,
        Outcome.QUOTA_EXHAUSTED,
        Outcome.OVERLOADED,
        Outcome.AUTH_ERROR,
        Outcome.CLIENT_ERROR,
    )
)
"""Requests the provider turned away before running them: they use no quota."""

_BUCKET_S = 900  # every time zone's offset is a multiple of 15 minutes, so a bucket sits in one local hour
_HOUR_S = 3600
_MONEY_PLACES = Decimal("1e-10")
_FIVE_HOUR_LOOKBACK = timedelta(days=2)
_WEEK_LOOKBACK = timedelta(weeks=5)
_CHAIN_STEPS = 64
_MAX_PROJECTION = timedelta(days=3650)
_RESET_TOLERANCE = timedelta(seconds=60)
_DATASET = "usage_events"  # the rollup dataset of usage_events (monitor.rollup)
_UNSETTLED_MAX = 50_000  # rows above safe_id whose hours are looked up one by one (see _Ctx.stale_hours)


@dataclass(frozen=True, slots=True)
class QuotaStatus:
    """One window of one plan: used of limit (in ``unit``), burn per hour, and when it runs out or resets.

    ``unit`` is ``requests``, ``prompts``, ``tokens``, ``calls``, ``%`` (an official percentage) or a currency
    code. ``exhausts_at`` is None when nothing burns or there is no limit; ``resets_at`` None when the window
    has not started or never resets. ``as_of`` is when the figures were true (the snapshot's time when
    ``source`` is ``official``).
    """

    plan: str
    kind: PlanKind
    window: str
    used: Decimal
    limit: Decimal | None
    unit: str
    share: float | None
    burn_per_hour: Decimal | None
    exhausts_at: datetime | None
    resets_at: datetime | None
    runs_out_before_reset: bool
    source: QuotaSource
    as_of: datetime
    notes: tuple[str, ...] = ()

    @property
    def remaining(self) -> Decimal | None:
        """``limit - used`` (negative when overdrawn); None without a limit."""
        return None if self.limit is None else self.limit - self.used


# ---------------------------------------------------------------------------------------------------------
# SQL building blocks


@dataclass(frozen=True, slots=True)
class _Scope:
    """Which usage events count: providers, models and sources (None: any) and whether refusals count."""

    providers: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None
    sources: tuple[str, ...] | None = None
    admitted_only: bool = False

    def where(
        self,
        start: datetime,
        end: datetime,
        model: ColumnElement[bool] | None,
        *,
        include_start: bool = True,
        include_end: bool = True,
    ) -> ColumnElement[bool]:
        ts = UsageEventRow.ts
        conds: list[ColumnElement[bool]] = [
            ts >= start if include_start else ts > start,
            ts <= end if include_end else ts < end,
        ]
        if self.providers is not None:
            conds.append(UsageEventRow.provider.in_(self.providers))
        if model is not None:
            conds.append(model)
        if self.sources is not None:
            conds.append(UsageEventRow.source.in_(self.sources))
        if self.admitted_only:
            conds.append(UsageEventRow.outcome.not_in(REFUSED_OUTCOMES))
        conds.append(counted_kind(UsageEventRow.kind))  # token counts and the like burn no quota
        return and_(*conds)

    def rollup_where(self, table: Any) -> list[ColumnElement[bool]]:
        """The provider, model and source selections on an hourly rollup model (usage or outcome rows)."""
        conds: list[ColumnElement[bool]] = []
        for name, values in (("provider", self.providers), ("model", self.models), ("source", self.sources)):
            if values is not None:
                conds.append(getattr(table, name).in_(values))
        return conds


def _bucket(dialect: str, seconds: int) -> ColumnElement[int]:
    """``floor(epoch(ts) / seconds)`` as an integer, on SQLite (naive UTC text) and Postgres (timestamptz)."""
    if dialect == "sqlite":
        epoch = sql_cast(func.strftime("%s", UsageEventRow.ts), Integer)
        return epoch.op("/", return_type=Integer)(seconds)  # integer operands: SQLite divides and floors
    return sql_cast(func.floor(extract("epoch", UsageEventRow.ts) / seconds), BigInteger)


def _dec(value: Any) -> Decimal:
    """A SQL aggregate as Decimal (SQLite returns float/int for SUM, Postgres Decimal); None counts as 0."""
    if value is None:
        return Decimal(0)
    if isinstance(value, Decimal):
        return value
    return Decimal(str(value))


def _utc_bucket(bucket: int, seconds: int) -> datetime:
    return datetime.fromtimestamp(int(bucket) * seconds, UTC)


_HOUR = timedelta(hours=1)
_QUARTER = timedelta(seconds=_BUCKET_S)

_Range = tuple[datetime, datetime, bool, bool]
"""A time range of raw rows: (start, end, start included, end included)."""

# Every throttled outcome is a refusal; the rollups count the throttled ones per row (``throttled``) and the
# others per outcome (``rollup_outcome_hourly``).
_REFUSED_UNTHROTTLED = tuple(o for o in REFUSED_OUTCOMES if Outcome(o) not in THROTTLED)


@dataclass(frozen=True, slots=True)
class _RollupState:
    """Where the rollup of ``usage_events`` stands (its ``rollup_state`` row)."""

    safe_id: int
    raw_floor: datetime | None


@dataclass(frozen=True, slots=True)
class _ModelHour:
    """One model's requests in one whole UTC hour as ``rollup_usage_hourly`` sums them (every source in scope).

    ``throttled`` is 0 for a scope that counts refusals too.
    """

    model: str | None
    requests: int
    throttled: int
    ok: int
    tokens: Decimal  # input + output tokens of every request, refused or not

    @property
    def errors(self) -> int:
        """Requests neither ok nor throttled: some may be refusals (quota_exhausted, auth_error, client_error)."""
        return self.requests - self.ok - self.throttled


@dataclass
class _HourlyUsage:
    """One scope's usage per whole UTC hour in [lo, hi) as the rollups give it (see ``_Ctx.hourly``).

    ``unreadable``: hours whose requests must be read from the raw rows (stale, or with probe errors the
    rollups cannot classify). ``refused[(hour, model)]``: the refusals other than throttling, from
    ``rollup_outcome_hourly``, filled in on demand for the hours in ``broken_down``.
    """

    lo: datetime
    hi: datetime
    rows: dict[datetime, list[_ModelHour]]
    unreadable: set[datetime]
    refused: dict[tuple[datetime, str | None], int] = field(default_factory=dict)
    broken_down: set[datetime] = field(default_factory=set)

    def extend(self, older: _HourlyUsage) -> None:
        """Add ``older``, which ends where this one starts."""
        self.lo = older.lo
        self.rows.update(older.rows)
        self.unreadable |= older.unreadable
        self.refused.update(older.refused)
        self.broken_down |= older.broken_down

    def admitted(self, hour: datetime) -> list[tuple[str | None, int, Decimal, bool]]:
        """(model, admitted requests, tokens, whether some request was refused) of a broken-down hour."""
        out = []
        for m in self.rows.get(hour, ()):
            other = self.refused.get((hour, m.model), 0)
            out.append((m.model, m.requests - m.throttled - other, m.tokens, bool(m.throttled or other)))
        return out


@dataclass
class _Ctx:
    """What one ``quota_statuses`` call shares: connection, settings, now, and lazily the FX rates, the rollup
    state and each scope's hourly usage from the rollups.

    Every window is cut the same way (``_pieces``, ``first``, ``spend``): the whole UTC hours inside it are read
    from the hourly rollups when they can answer (``stale_hours`` says where they are current; ``hourly`` and
    ``break_down`` where they can tell refusals apart), and the rest (the partial hours at both ends, and the
    hours the rollups cannot answer) from the raw rows. So a window costs its rollup rows plus two partial
    hours of raw rows, plus the hours the rollup has not caught up with or cannot split.

    Speed of the raw queries: a query on one provider names its models too, so both SQLite and Postgres seek
    the (provider, model, ts) index to the time range instead of reading every row of the provider (without
    planner statistics, SQLite otherwise walks all of them). The models are found by a loose index scan, one
    seek per model; events without a model are queried separately (``model IS NULL`` seeks the index, an OR
    would not).
    """

    conn: Connection
    settings: Settings
    now: datetime
    capture_start: datetime | None
    _book: RateBook | None = field(default=None)
    _models: dict[str, tuple[tuple[str, ...], bool]] = field(default_factory=dict)
    _counts: dict[datetime, int] = field(default_factory=dict)
    _counted: set[datetime] = field(default_factory=set)
    _state: _RollupState | None = field(default=None)
    _state_loaded: bool = field(default=False)
    _unsettled: set[datetime] | None = field(default=None)
    _hourly: dict[_Scope, _HourlyUsage] = field(default_factory=dict)

    @property
    def dialect(self) -> str:
        return self.conn.dialect.name

    def book(self) -> RateBook:
        if self._book is None:
            fx = self.settings.fx
            self._book = RateBook.load(self.conn.engine, default_rates(fx.usd_jpy, fx.cny_jpy))
        return self._book

    def models_of(self, provider: str) -> tuple[tuple[str, ...], bool]:
        """(every model id stored for ``provider``, whether some of its events have no model)."""
        known = self._models.get(provider)
        if known is None:
            u = UsageEventRow
            seed = select(func.min(u.model).label("model")).where(u.provider == provider).cte(recursive=True)
            step = select(
                select(func.min(u.model)).where(u.provider == provider, u.model > seed.c.model).scalar_subquery()
            ).where(seed.c.model.is_not(None))
            walk = seed.union_all(step)
            found = self.conn.execute(select(walk.c.model).where(walk.c.model.is_not(None))).scalars().all()
            nameless = select(u.id).where(u.provider == provider, u.model.is_(None)).limit(1)
            known = (tuple(found), self.conn.execute(nameless).first() is not None)
            self._models[provider] = known
        return known

    def model_filters(self, scope: _Scope, *, split: bool = False) -> list[ColumnElement[bool] | None]:
        """The model conditions to query ``scope`` with, one statement each (none: nothing can match).

        ``split``: one condition per model instead of one IN list (for queries that walk each range in order).
        """
        if scope.models is not None:
            names, nameless = scope.models, False
        elif scope.providers is not None and len(scope.providers) == 1:
            names, nameless = self.models_of(scope.providers[0])
        else:
            return [None]
        out: list[ColumnElement[bool] | None] = []
        if split:
            out.extend(UsageEventRow.model == name for name in names)
        elif names:
            out.append(UsageEventRow.model.in_(names))
        if nameless:
            out.append(UsageEventRow.model.is_(None))
        return out

    # --- where the rollups are current ---------------------------------------------------------------------

    def rollup_state(self) -> _RollupState | None:
        """The rollup state of ``usage_events``; None when no refresh ever ran (no rollups to read)."""
        if not self._state_loaded:
            s = RollupStateRow
            row = self.conn.execute(select(s.safe_id, s.raw_floor).where(s.dataset == _DATASET)).first()
            self._state = None if row is None else _RollupState(int(row[0]), row[1])
            self._state_loaded = True
        return self._state

    def floor(self) -> datetime | None:
        """The hour before which raw usage events were pruned (only their rollups remain); None: none was."""
        state = self.rollup_state()
        return state.raw_floor if state else None

    def stale_hours(self, start: datetime, end: datetime) -> set[datetime]:
        """The whole UTC hours in [start, end) (hour-aligned) whose rollups are not current.

        An hour's rollups are current when it was pruned (before ``raw_floor``: only its rollups remain), or when
        none of its raw rows has an id above ``safe_id`` (by the refresh's contract, ``monitor.rollup``, every
        such row was seen by a refresh, which recomputed the hour with it), or when ``rollup_hours`` counted as
        many raw rows as it has now (raw rows are insert-only, so an equal count is an unchanged hour). Only the
        hours holding rows above ``safe_id`` (the last minutes the refresh has not settled yet, a spool replay)
        are counted, so the check costs those rows, not the window. When more than ``_UNSETTLED_MAX`` rows are
        above ``safe_id`` (the first overlap period after the first refresh, or no refresh running for a long
        time) finding their hours would cost as much as counting: every hour of the range is counted instead.
        Never refreshed: every hour is stale.
        """
        state = self.rollup_state()
        if state is None:
            return set(_hour_range(start, end))
        floor = state.raw_floor
        if self._unsettled is None:
            ids = UsageEventRow.id
            top = self.conn.execute(select(func.coalesce(func.max(ids), 0))).scalar_one()
            if int(top) - state.safe_id <= _UNSETTLED_MAX:
                stmt = select(_bucket(self.dialect, _HOUR_S)).where(ids > state.safe_id).distinct()
                self._unsettled = {_utc_bucket(b, _HOUR_S) for b in self.conn.execute(stmt).scalars()}
        hours = _hour_range(start, end) if self._unsettled is None else sorted(self._unsettled)
        suspect = [h for h in hours if start <= h < end and (floor is None or h >= floor)]
        if not suspect:
            return set()
        counted = self._raw_counts(suspect)
        known = self._rolled_counts(suspect[0], suspect[-1] + _HOUR)
        return {h for h in suspect if counted.get(h, 0) != known.get(h, 0)}

    def _raw_counts(self, hours: Sequence[datetime]) -> dict[datetime, int]:
        """Raw events per UTC hour of ``hours`` (sorted): index-only scans of the ``ts`` index, remembered for
        the call (the windows of several plans often span the same hours)."""
        todo = [h for h in hours if h not in self._counted]
        bucket = _bucket(self.dialect, _HOUR_S).label("bucket")
        ts = UsageEventRow.ts
        for lo, hi in hour_runs(todo):
            stmt = select(bucket, func.count()).where(ts >= lo, ts < hi).group_by(bucket)
            self._counts.update((_utc_bucket(b, _HOUR_S), int(n)) for b, n in self.conn.execute(stmt).all())
        self._counted.update(todo)
        return {h: self._counts.get(h, 0) for h in hours}

    def _rolled_counts(self, start: datetime, end: datetime) -> dict[datetime, int]:
        h = RollupHourRow
        stmt = select(h.hour, h.raw_rows).where(h.dataset == _DATASET, h.hour >= start, h.hour < end)
        return {hour: int(n) for hour, n in self.conn.execute(stmt).all()}

    # --- requests and tokens -------------------------------------------------------------------------------

    def hourly(self, scope: _Scope, lo: datetime, hi: datetime) -> _HourlyUsage:
        """``scope``'s usage per whole hour in [lo, hi) from ``rollup_usage_hourly``, remembered for the call (the
        windows of one plan nest: the 5-hour and weekly chains, the used amounts and the burn read the same hours).

        Admitted requests of an hour = ``requests - throttled`` less the other refusals (quota_exhausted,
        auth_error, client_error), which ``rollup_outcome_hourly`` counts per outcome (``break_down``). That table
        leaves out the usage rows of source ``probe`` (its ``probe`` rows come from ``probe_results``), so an hour
        whose probe rows in scope include outcomes other than ok and throttled (which may or may not be
        refusals) is read from the raw rows. Stale hours are read raw too; pruned hours (before ``raw_floor``)
        have only their rollups, which are taken as they are (their unclassified probe errors counted as
        admitted). The rollups key a missing model as "": it reads back as None (no model).
        """
        known = self._hourly.get(scope)
        if known is not None and known.hi == hi:
            if lo < known.lo:
                known.extend(self._fetch_hourly(scope, lo, known.lo))
            return known
        fetched = self._fetch_hourly(scope, lo, hi)
        self._hourly[scope] = fetched
        return fetched

    def _fetch_hourly(self, scope: _Scope, lo: datetime, hi: datetime) -> _HourlyUsage:
        stale = self.stale_hours(lo, hi)
        state = self.rollup_state()
        if state is None or (scope.models is not None and "" in scope.models):
            # No rollups; or a model named "" that the rollups cannot tell from a missing one.
            return _HourlyUsage(lo, hi, {}, set(_hour_range(lo, hi)))
        floor = state.raw_floor
        r = UsageHourlyRow
        conds: list[ColumnElement[bool]] = [r.hour >= lo, r.hour < hi, *scope.rollup_where(r)]
        unclassified = case((r.source == "probe", r.requests - r.ok - r.throttled), else_=0)
        sums = (func.sum(r.requests), func.sum(r.throttled), func.sum(r.ok), func.sum(unclassified))
        tokens = func.sum(r.input_tokens + r.output_tokens)
        stmt = select(r.hour, r.model, *sums, tokens).where(*conds).group_by(r.hour, r.model)
        rows: dict[datetime, list[_ModelHour]] = {}
        unreadable = set(stale)
        for hour, model, requests, throttled, ok, unsure, used in self.conn.execute(stmt).all():
            if hour in stale:
                continue
            if unsure and scope.admitted_only and not (floor is not None and hour < floor):
                unreadable.add(hour)
            refused = int(throttled) if scope.admitted_only else 0  # a scope counting refusals takes nothing off
            rows.setdefault(hour, []).append(_ModelHour(model or None, int(requests), refused, int(ok), _dec(used)))
        out = _HourlyUsage(lo, hi, rows, unreadable)
        if not scope.admitted_only:
            out.broken_down.update(rows)  # nothing to take off
        return out

    def break_down(self, scope: _Scope, hourly: _HourlyUsage, hours: Sequence[datetime]) -> None:
        """Fill in ``hourly.refused`` for ``hours``: only for those with errors (requests neither ok nor
        throttled), the others have no refusal to take off but throttling."""
        todo = sorted(
            h
            for h in hours
            if h not in hourly.broken_down
            and h not in hourly.unreadable
            and any(m.errors for m in hourly.rows.get(h, ()))
        )
        hourly.broken_down.update(h for h in hours if h in hourly.rows)
        o = OutcomeHourlyRow
        for lo, hi in hour_runs(todo):
            conds: list[ColumnElement[bool]] = [
                o.hour >= lo,
                o.hour < hi,
                o.outcome.in_(_REFUSED_UNTHROTTLED),
                o.source != "probe",  # probe_results' breakdown, not the usage rows'
                *scope.rollup_where(o),
            ]
            stmt = select(o.hour, o.model, func.sum(o.requests)).where(*conds).group_by(o.hour, o.model)
            hourly.refused.update(((h, m or None), int(n)) for h, m, n in self.conn.execute(stmt).all())

    def _pieces(
        self,
        scope: _Scope,
        start: datetime,
        end: datetime,
        *,
        tokens: bool,
        include_start: bool,
        mixed: Callable[[datetime], bool] | None = None,
    ) -> tuple[list[tuple[str | None, datetime, Decimal]], list[_Range]]:
        """The range cut into (model, hour, admitted requests or their tokens) of the whole hours the rollups
        answer, and the raw ranges left: the partial hours at the ends, the hours the rollups cannot answer
        (``hourly``; for tokens also the hours with refusals, whose tokens the rollups do not set apart) and the
        hours ``mixed`` names (they need the 15-minute buckets of the raw rows)."""
        first_full, last_full = _whole_hours(start, end, include_start)
        rolled: list[tuple[str | None, datetime, Decimal]] = []
        raw_hours: set[datetime] = set()
        if first_full < last_full:
            hourly = self.hourly(scope, first_full, last_full)
            raw_hours = {h for h in hourly.unreadable if first_full <= h < last_full}
            # A pruned hour has only its rollups: it stays with them (a peak factor taken at its start, the
            # tokens of its refused requests counted).
            kept = max(first_full, self.floor() or first_full)
            if mixed is not None:
                raw_hours.update(h for h in _hour_range(kept, last_full) if mixed(h))
            hours = sorted(h for h in hourly.rows if first_full <= h < last_full and h not in raw_hours)
            self.break_down(scope, hourly, hours)
            for hour in hours:
                models = hourly.admitted(hour)
                if tokens and hour >= kept and any(refused for _, _, _, refused in models):
                    raw_hours.add(hour)
                    continue
                rolled.extend((model, hour, used if tokens else Decimal(n)) for model, n, used, _ in models)
        return rolled, _raw_ranges(start, end, include_start, first_full, last_full, raw_hours)

    def count(self, scope: _Scope, start: datetime, end: datetime, *, include_start: bool = True) -> int:
        """Requests in the range (``end`` included)."""
        rolled, ranges = self._pieces(scope, start, end, tokens=False, include_start=include_start)
        total = sum((n for _, _, n in rolled), Decimal(0))
        for lo, hi, with_lo, with_hi in ranges:
            for model in self.model_filters(scope):
                where = scope.where(lo, hi, model, include_start=with_lo, include_end=with_hi)
                total += self.conn.execute(select(func.count()).select_from(UsageEventRow).where(where)).scalar_one()
        return int(total)

    def first(self, scope: _Scope, start: datetime, end: datetime, *, include_start: bool = True) -> datetime | None:
        """The earliest event in the range (``end`` included).

        The rollups tell which whole hour holds it (an hour with ok requests surely does; one whose requests
        are all throttled surely does not; the others are broken down per outcome one by one), and the exact
        time comes from one ``ORDER BY ts LIMIT 1`` per model inside that hour (or inside the raw ranges before
        it), which stops at the first match. An hour whose raw rows were pruned gives its start: the rollups
        keep no times.
        """
        first_full, last_full = _whole_hours(start, end, include_start)
        steps: list[tuple[datetime, _Range, bool]] = []
        raw_hours: set[datetime] = set()
        hourly: _HourlyUsage | None = None
        if first_full < last_full:
            hourly = self.hourly(scope, first_full, last_full)
            raw_hours = {h for h in hourly.unreadable if first_full <= h < last_full}
            for hour, models in hourly.rows.items():
                whole = first_full <= hour < last_full and hour not in raw_hours
                if whole and any(m.requests > m.throttled for m in models):
                    steps.append((hour, (hour, hour + _HOUR, True, False), True))
        ranges = _raw_ranges(start, end, include_start, first_full, last_full, raw_hours)
        steps += [(r[0], r, False) for r in ranges]
        floor = self.floor()
        for at, (lo, hi, with_lo, with_hi), rolled in sorted(steps, key=lambda s: s[0]):
            if rolled and hourly is not None and not any(m.ok for m in hourly.rows[at]):
                self.break_down(scope, hourly, [at])
                if not any(n > 0 for _, n, _, _ in hourly.admitted(at)):
                    continue
            found = self._raw_first(scope, lo, hi, include_start=with_lo, include_end=with_hi)
            if found is not None:
                return found
            if rolled and floor is not None and at < floor:
                return at
        return None

    def _raw_first(
        self, scope: _Scope, start: datetime, end: datetime, *, include_start: bool, include_end: bool
    ) -> datetime | None:
        firsts: list[datetime] = []
        for model in self.model_filters(scope, split=True):
            where = scope.where(start, end, model, include_start=include_start, include_end=include_end)
            ts = self.conn.execute(select(UsageEventRow.ts).where(where).order_by(UsageEventRow.ts).limit(1)).scalar()
            if ts is not None:
                firsts.append(ts)
        return min(firsts, default=None)

    def grouped(
        self,
        scope: _Scope,
        start: datetime,
        end: datetime,
        *,
        tokens: bool,
        include_start: bool = True,
        mixed: Callable[[datetime], bool] | None = None,
    ) -> list[tuple[str | None, datetime, Decimal]]:
        """(model, bucket start, requests or tokens) for the events in the range (``end`` included): one bucket
        per whole hour read from the rollups, 15-minute buckets elsewhere (and in the hours ``mixed`` names)."""
        rolled, ranges = self._pieces(scope, start, end, tokens=tokens, include_start=include_start, mixed=mixed)
        bucket = _bucket(self.dialect, _BUCKET_S).label("bucket")
        amount = (
            func.sum(func.coalesce(UsageEventRow.input_tokens, 0) + func.coalesce(UsageEventRow.output_tokens, 0))
            if tokens
            else func.count()
        )
        out = rolled
        for lo, hi, with_lo, with_hi in ranges:
            for model in self.model_filters(scope):
                where = scope.where(lo, hi, model, include_start=with_lo, include_end=with_hi)
                stmt = select(UsageEventRow.model, bucket, amount).where(where).group_by(UsageEventRow.model, bucket)
                out.extend((m, _utc_bucket(b, _BUCKET_S), _dec(a)) for m, b, a in self.conn.execute(stmt).all())
        return out

    # --- money ---------------------------------------------------------------------------------------------

    def spend(
        self, scope: _Scope, start: datetime, end: datetime, *, include_start: bool = True
    ) -> list[tuple[datetime, str | None, Decimal, int]]:
        """(UTC hour, currency, summed cost, unpriced requests) for the range (``end`` included); currency None
        carries only the count of requests that reported usage but have no price.

        Whole hours come from ``rollup_usage_hourly`` where it is current (``stale_hours``); the stale hours and
        the partial hours at both ends from the raw events. So a long window costs its rollup rows plus the few
        hours the rollup has not caught up with, and agrees with ``monitor.analytics``.
        """
        first_full, last_full = _whole_hours(start, end, include_start)
        stale = self.stale_hours(first_full, last_full) if first_full < last_full else set()
        out: list[tuple[datetime, str | None, Decimal, int]] = []
        if len(stale) < (last_full - first_full) // _HOUR:
            out = self._rolled_spend(scope, first_full, last_full, stale)
        for lo, hi, with_lo, with_hi in _raw_ranges(start, end, include_start, first_full, last_full, stale):
            out.extend(self._raw_spend(scope, lo, hi, include_start=with_lo, include_end=with_hi))
        return out

    def _raw_spend(
        self, scope: _Scope, start: datetime, end: datetime, *, include_start: bool, include_end: bool
    ) -> list[tuple[datetime, str | None, Decimal, int]]:
        u = UsageEventRow
        bucket = _bucket(self.dialect, _HOUR_S).label("bucket")
        reported = or_(u.input_tokens.is_not(None), u.output_tokens.is_not(None), u.images.is_not(None))
        unpriced = func.sum(case((and_(u.cost_amount.is_(None), reported), 1), else_=0))
        out: list[tuple[datetime, str | None, Decimal, int]] = []
        for model in self.model_filters(scope):
            where = scope.where(start, end, model, include_start=include_start, include_end=include_end)
            stmt = (
                select(bucket, u.cost_currency, func.sum(u.cost_amount), unpriced)
                .where(where)
                .group_by(bucket, u.cost_currency)
            )
            for b, currency, amount, n in self.conn.execute(stmt).all():
                out.append((_utc_bucket(b, _HOUR_S), currency, _dec(amount).quantize(_MONEY_PLACES), int(n or 0)))
        return out

    def _rolled_spend(
        self, scope: _Scope, start: datetime, end: datetime, stale: set[datetime]
    ) -> list[tuple[datetime, str | None, Decimal, int]]:
        r = UsageHourlyRow
        conds = [r.hour >= start, r.hour < end]
        if scope.providers is not None:
            conds.append(r.provider.in_(scope.providers))
        sums = (func.sum(r.cost_usd_e10), func.sum(r.cost_cny_e10), func.sum(r.cost_jpy_e10), func.sum(r.unpriced))
        out: list[tuple[datetime, str | None, Decimal, int]] = []
        for hour, usd, cny, jpy, unpriced in self.conn.execute(select(r.hour, *sums).where(*conds).group_by(r.hour)):
            if hour in stale:
                continue
            for currency, units in (("USD", usd), ("CNY", cny), ("JPY", jpy)):
                if units:
                    out.append((hour, currency, Decimal(int(units)) / COST_SCALE, 0))
            if unpriced:
                out.append((hour, None, Decimal(0), int(unpriced)))
        return out

    def burn_span(self, window: timedelta) -> tuple[timedelta, bool] | None:
        """The burn window actually observed, and whether its start is included: a window reaching back before
        the first stored event is shortened to start at that event (included), but not below a twelfth."""
        if self.capture_start is None:
            return None
        seen = self.now - self.capture_start
        if seen >= window:
            return window, False
        return max(seen, window / 12), True


def _ceil_hour(at: datetime) -> datetime:
    floor = floor_hour(at)
    return floor if floor == at else floor + _HOUR


def _whole_hours(start: datetime, end: datetime, include_start: bool) -> tuple[datetime, datetime]:
    """[first, last) of the whole UTC hours inside the range (first >= last: none). A range that leaves out
    its start leaves out an hour starting there too (the rollups would count an event at that instant)."""
    first = _ceil_hour(start) if include_start else floor_hour(start) + _HOUR
    return first, max(first, floor_hour(end))


def _hour_range(start: datetime, end: datetime) -> list[datetime]:
    """The hours from ``start`` (hour-aligned) up to ``end``, excluded."""
    out: list[datetime] = []
    hour = start
    while hour < end:
        out.append(hour)
        hour += _HOUR
    return out


def _raw_ranges(
    start: datetime,
    end: datetime,
    include_start: bool,
    first_full: datetime,
    last_full: datetime,
    raw_hours: Iterable[datetime],
) -> list[_Range]:
    """What the raw rows must answer of the range: the partial hours at both ends and ``raw_hours`` (whole
    hours in [first_full, last_full)), joined where they touch."""
    if first_full >= last_full:  # no whole hour in the range
        return [(start, end, include_start, True)]
    ranges: list[_Range] = [(h, h + _HOUR, True, False) for h in raw_hours if first_full <= h < last_full]
    if start < first_full:
        ranges.append((start, first_full, include_start, False))
    ranges.append((last_full, end, True, True))
    return _merge(ranges)


def _merge(ranges: list[_Range]) -> list[_Range]:
    """Join ranges that touch, in time order."""
    out: list[_Range] = []
    for lo, hi, with_lo, with_hi in sorted(ranges):
        if out and out[-1][1] == lo and not out[-1][3]:
            out[-1] = (out[-1][0], hi, out[-1][2], with_hi)
        else:
            out.append((lo, hi, with_lo, with_hi))
    return out


def _mixed_hours(factor: Callable[[datetime], Decimal] | None) -> Callable[[datetime], bool] | None:
    """Whether a UTC hour holds two peak factors (a zone whose offset is not whole hours): such an hour needs
    the 15-minute buckets of the raw rows, an hourly rollup row cannot be split."""
    if factor is None:
        return None

    def mixed(hour: datetime) -> bool:
        first = factor(hour)
        return any(factor(hour + k * _QUARTER) != first for k in range(1, _HOUR_S // _BUCKET_S))

    return mixed


def _hours(span: timedelta) -> Decimal:
    return Decimal(str(span.total_seconds())) / Decimal(3600)


def _project(
    start: datetime, remaining: Decimal, rate: Decimal | None, factor: Callable[[datetime], Decimal] | None = None
) -> datetime | None:
    """When ``remaining`` is used up from ``start`` at ``rate`` per hour (times ``factor(t)`` at each moment)."""
    if remaining <= 0:
        return start
    if rate is None or rate <= 0:
        return None
    if factor is None:
        hours = remaining / rate
        if hours > _hours(_MAX_PROJECTION):
            return None
        return start + timedelta(hours=float(hours))
    t, end = start, start + _MAX_PROJECTION
    while t < end:
        # The factor is constant within a 15-minute bucket of UTC time.
        step_end = _utc_bucket(int(t.timestamp()) // _BUCKET_S + 1, _BUCKET_S)
        r = rate * factor(t)
        capacity = r * _hours(step_end - t)
        if remaining <= capacity:
            return t + timedelta(hours=float(remaining / r))
        remaining -= capacity
        t = step_end
    return None


def _share(used: Decimal, limit: Decimal | None) -> float | None:
    return float(used / limit) if limit is not None and limit > 0 else None


def _runs_out(exhausts_at: datetime | None, resets_at: datetime | None) -> bool:
    return exhausts_at is not None and (resets_at is None or exhausts_at < resets_at)


# ---------------------------------------------------------------------------------------------------------
# Free tier


def _free_tier(ctx: _Ctx, plan: FreeTierPlan) -> list[QuotaStatus]:
    now = ctx.now
    models = list(plan.models) if plan.models else None
    models = models or sorted({t.model for t in ctx.settings.targets if t.plan == plan.name}) or None
    scope = _Scope(providers=(plan.provider,), models=tuple(models) if models else None, admitted_only=True)
    counted = f"requests to {plan.provider}" + (f" ({', '.join(models)})" if models else "")
    out: list[QuotaStatus] = []

    def status(window: str, used: int, limit: int, burn: Decimal | None, **kw: Any) -> QuotaStatus:
        return QuotaStatus(
            plan=plan.name,
            kind="free_tier",
            window=window,
            used=Decimal(used),
            limit=Decimal(limit),
            unit="requests",
            share=_share(Decimal(used), Decimal(limit)),
            burn_per_hour=burn,
            source="estimate",
            as_of=now,
            **kw,
        )

    if plan.requests_per_minute:
        start = now - timedelta(minutes=1)
        used = ctx.count(scope, start, now, include_start=False)
        oldest = ctx.first(scope, start, now, include_start=False)
        full = used >= plan.requests_per_minute
        out.append(
            status(
                "minute",
                used,
                plan.requests_per_minute,
                Decimal(used * 60),
                exhausts_at=now if full else None,
                resets_at=oldest + timedelta(minutes=1) if oldest else None,
                runs_out_before_reset=full,
                notes=(f"{counted} in the last 60 seconds (rolling)",),
            )
        )
    if not (plan.requests_per_5h or plan.requests_per_day):
        return out
    observed = ctx.burn_span(REQUEST_BURN_WINDOW)
    span = observed[0] if observed else None
    recent = ctx.count(scope, now - observed[0], now, include_start=observed[1]) if observed else 0
    burn = Decimal(recent) / _hours(observed[0]) if observed else Decimal(0)
    burn_note = f"burn: {counted} in the last {_describe_span(span)}"
    if plan.requests_per_5h:
        start5 = _chain_start(ctx, scope, FIVE_HOURS, _FIVE_HOUR_LOOKBACK, None)
        used = ctx.count(scope, start5, now) if start5 else 0
        resets = start5 + FIVE_HOURS if start5 else None
        exhausts = _project(now, Decimal(plan.requests_per_5h - used), burn)
        out.append(
            status(
                "5 hours",
                used,
                plan.requests_per_5h,
                burn,
                exhausts_at=exhausts,
                resets_at=resets,
                runs_out_before_reset=_runs_out(exhausts, resets or now + FIVE_HOURS),
                notes=(
                    "window starts at the first request after the previous one ended"
                    + ("" if start5 else "; none is open now"),
                    burn_note,
                ),
            )
        )
    if plan.requests_per_day:
        zone_name = DAILY_RESET_ZONE.get(plan.provider, DEFAULT_DAILY_RESET_ZONE)
        zone = ZoneInfo(zone_name)
        local = now.astimezone(zone)
        day_start = datetime.combine(local.date(), time.min, tzinfo=zone)
        next_day = datetime.combine(local.date() + timedelta(days=1), time.min, tzinfo=zone)
        used = ctx.count(scope, day_start, now)
        exhausts = _project(now, Decimal(plan.requests_per_day - used), burn)
        out.append(
            status(
                "day",
                used,
                plan.requests_per_day,
                burn,
                exhausts_at=exhausts,
                resets_at=next_day.astimezone(UTC),
                runs_out_before_reset=_runs_out(exhausts, next_day),
                notes=(f"{counted} since 00:00 {zone_name}; resets at midnight there", burn_note),
            )
        )
    return out


def _describe_span(span: timedelta | None) -> str:
    if span is None:
        return "hour (no usage recorded yet)"
    minutes = round(span.total_seconds() / 60)
    return f"{minutes} minutes" if minutes < 120 else f"{minutes / 60:.4g} hours"


def _chain_start(
    ctx: _Ctx, scope: _Scope, length: timedelta, lookback: timedelta, anchor_reset: datetime | None
) -> datetime | None:
    """Start of the window open at ``now`` for windows that begin at the first request after the last one ended.

    ``anchor_reset`` (an official reset time of such a window) is a known window end: the chain starts there
    when it is recent enough. Otherwise it starts at the first request within ``lookback``.
    """
    now = ctx.now
    if anchor_reset is not None and now - lookback <= anchor_reset - length <= now:
        if now < anchor_reset:
            return anchor_reset - length
        start = ctx.first(scope, anchor_reset, now)
    else:
        start = ctx.first(scope, now - lookback, now)
    for _ in range(_CHAIN_STEPS):
        if start is None or now < start + length:
            return start
        start = ctx.first(scope, start + length, now)
    return None


def _grid_start(anchor_reset: datetime, length: timedelta, now: datetime) -> datetime:
    """Start of the window open at ``now`` in fixed windows of ``length`` ending at ``anchor_reset``."""
    periods = (now - (anchor_reset - length)) // length
    return anchor_reset - length + periods * length


# ---------------------------------------------------------------------------------------------------------
# Coding Plan


@dataclass(frozen=True, slots=True)
class _Snapshot:
    ts: datetime
    level: str | None
    limit_type: str
    window: str | None
    percentage: float | None
    used: float | None
    limit: float | None
    next_reset: datetime | None


def _snapshot_columns() -> tuple[Any, ...]:
    s = QuotaSnapshotRow
    return (s.ts, s.level, s.limit_type, s.window, s.percentage, s.used, s.limit, s.next_reset)


def _latest_official(ctx: _Ctx, plan: CodingPlan) -> list[_Snapshot]:
    """The windows of the latest official poll of ``plan`` up to now (any age)."""
    s = QuotaSnapshotRow
    mine = and_(s.plan == plan_key(plan.name), s.provider == plan.provider, s.source == "official", s.ts <= ctx.now)
    latest = ctx.conn.execute(select(func.max(s.ts)).where(mine)).scalar_one()
    if latest is None:
        return []
    rows = ctx.conn.execute(select(*_snapshot_columns()).where(mine, s.ts == latest).order_by(s.id)).all()
    return [_Snapshot(*row) for row in rows]


def _official_reset(ctx: _Ctx, plan: CodingPlan, window: str) -> datetime | None:
    """The reset time in the latest official snapshot of a TOKENS_LIMIT window that had one (any age)."""
    s = QuotaSnapshotRow
    stmt = (
        select(s.next_reset)
        .where(
            s.plan == plan_key(plan.name),
            s.provider == plan.provider,
            s.source == "official",
            s.limit_type == TOKENS_LIMIT,
            s.window == window,
            s.next_reset.is_not(None),
            s.ts <= ctx.now,
        )
        .order_by(s.ts.desc())
        .limit(1)
    )
    return ctx.conn.execute(stmt).scalar()


def _peak_factor(plan: CodingPlan) -> Callable[[datetime], Decimal] | None:
    if plan.peak_multiplier == 1:
        return None
    zone = ZoneInfo(plan.peak_zone)
    first, last = plan.peak_hours
    multiplier = Decimal(str(plan.peak_multiplier))

    def factor(at: datetime) -> Decimal:
        return multiplier if first <= at.astimezone(zone).hour < last else Decimal(1)

    return factor


class _Weights:
    """A Coding Plan's per-model weights: exact model id first, then case-insensitive; 1 when absent."""

    def __init__(self, weights: dict[str, float]) -> None:
        self._exact = {k: Decimal(str(v)) for k, v in weights.items()}
        self._folded = {k.lower(): v for k, v in self._exact.items()}

    def known(self, model: str) -> bool:
        return model in self._exact or model.lower() in self._folded

    def __call__(self, model: str | None) -> Decimal:
        if model is None:
            return Decimal(1)
        return self._exact.get(model, self._folded.get(model.lower(), Decimal(1)))


def _coding_plan(ctx: _Ctx, plan: CodingPlan) -> list[QuotaStatus]:
    now = ctx.now
    scope = _Scope(providers=(plan.provider,), sources=CODING_SOURCES, admitted_only=True)
    tokens = plan.unit == "tokens"
    weight, factor = _Weights(plan.model_weights), _peak_factor(plan)
    mixed = _mixed_hours(factor)

    def weighted(groups: Iterable[tuple[str | None, datetime, Decimal]], *, peak: bool = True) -> Decimal:
        total = Decimal(0)
        for model, bucket, amount in groups:
            total += amount * weight(model) * (factor(bucket) if peak and factor else Decimal(1))
        return total

    observed = ctx.burn_span(REQUEST_BURN_WINDOW)
    span = observed[0] if observed else None
    recent = (
        ctx.grouped(scope, now - observed[0], now, tokens=tokens, include_start=observed[1], mixed=mixed)
        if observed
        else []
    )
    burn = weighted(recent) / _hours(observed[0]) if observed else Decimal(0)
    base_rate = weighted(recent, peak=False) / _hours(observed[0]) if observed else Decimal(0)
    unweighted = sorted({m for m, _, _ in recent if m is not None and plan.model_weights and not weight.known(m)})
    common: list[str] = [
        f"{plan.unit} on {plan.provider} captured by the transport or proxy, weighted per model"
        + (
            f", x{plan.peak_multiplier:g} in {plan.peak_hours[0]}:00-{plan.peak_hours[1]}:00 {plan.peak_zone}"
            if factor
            else ""
        ),
        f"burn: the last {_describe_span(span)}",
    ]
    if unweighted:
        common.append(f"no weight configured for {', '.join(unweighted)} (counted as 1)")

    official = _latest_official(ctx, plan)
    fresh = [s for s in official if now - s.ts < OFFICIAL_MAX_AGE]
    out: list[QuotaStatus] = []
    for label, key, length, limit in (
        ("5 hours", WINDOW_5H, FIVE_HOURS, plan.five_hour_limit),
        ("week", WINDOW_WEEK, WEEK, plan.weekly_limit),
    ):
        anchor = _official_reset(ctx, plan, key)
        notes = list(common)
        if key == WINDOW_WEEK and anchor is not None:
            start: datetime | None = _grid_start(anchor, length, now)
            notes.append("weekly windows pinned to the official reset time")
        else:
            start = _chain_start(
                ctx, scope, length, _FIVE_HOUR_LOOKBACK if key == WINDOW_5H else _WEEK_LOOKBACK, anchor
            )
            notes.append("window starts at the first request after the previous one ended")
        used = weighted(ctx.grouped(scope, start, now, tokens=tokens, mixed=mixed)) if start else Decimal(0)
        resets = start + length if start else None
        lim = Decimal(limit) if limit else None
        exhausts = _project(now, lim - used, base_rate, factor) if lim is not None else None
        if lim is None:
            notes.append(f"no {label} limit configured")
        estimate = QuotaStatus(
            plan=plan.name,
            kind="coding_plan",
            window=label,
            used=used,
            limit=lim,
            unit=plan.unit,
            share=_share(used, lim),
            burn_per_hour=burn,
            exhausts_at=exhausts,
            resets_at=resets,
            runs_out_before_reset=_runs_out(exhausts, resets or now + length),
            source="estimate",
            as_of=now,
            notes=tuple(notes),
        )
        snap = next((s for s in fresh if s.limit_type == TOKENS_LIMIT and s.window == key), None)
        chosen = _official_status(ctx, plan, snap, label, estimate) if snap is not None else None
        out.append(chosen or estimate)
    for snap in fresh:
        if snap.limit_type == TOKENS_LIMIT and snap.window in (WINDOW_5H, WINDOW_WEEK):
            continue
        extra = _official_status(ctx, plan, snap, _official_label(snap), None)
        if extra is not None:
            out.append(extra)
    return out


def _official_label(snap: _Snapshot) -> str:
    if snap.limit_type == TIME_LIMIT and snap.window == WINDOW_MONTH:
        return "month (tool calls)"
    return f"{snap.limit_type} {snap.window or ''}".strip()


def _official_status(
    ctx: _Ctx, plan: CodingPlan, snap: _Snapshot, label: str, estimate: QuotaStatus | None
) -> QuotaStatus | None:
    """The provider's figure for one window, or None when it says too little (or its window has reset since)."""
    if snap.next_reset is not None and snap.next_reset <= ctx.now:
        return None
    notes = [f"official figure from the quota API at {snap.ts.isoformat(timespec='seconds')}"]
    if snap.level and snap.level.lower() != plan.level:
        notes.append(f"the provider reports level {snap.level!r}; the config says {plan.level!r}")
    pct = snap.percentage
    clamped = None if pct is None else min(max(pct, 0.0), 100.0)
    if clamped is not None and clamped != pct:
        notes.append(f"the provider reported {pct:g}%; shown as {clamped:g}%")
    if snap.used is not None and snap.limit is not None and snap.limit > 0:
        used, limit = Decimal(str(snap.used)), Decimal(str(snap.limit))
        unit = {TOKENS_LIMIT: "tokens", TIME_LIMIT: "calls"}.get(snap.limit_type, "units")
        share = clamped / 100 if clamped is not None else float(used / limit)
        by_percentage = False
    elif clamped is not None:
        used, limit, unit, share = Decimal(str(clamped)), Decimal(100), "%", clamped / 100
        by_percentage = True
    else:
        return None
    burn = _official_burn(ctx, plan, snap, by_percentage)
    if burn is None and estimate is not None and estimate.burn_per_hour is not None and estimate.limit:
        if by_percentage:
            burn = estimate.burn_per_hour / estimate.limit * 100
        elif unit == estimate.unit:
            burn = estimate.burn_per_hour
        if burn is not None:
            notes.append("burn from the local estimate (too few official snapshots in the last hour)")
    elif burn is not None:
        notes.append("burn from the official snapshots of the last hour")
    exhausts = _project(snap.ts, limit - used, burn)
    return QuotaStatus(
        plan=plan.name,
        kind="coding_plan",
        window=label,
        used=used,
        limit=limit,
        unit=unit,
        share=share,
        burn_per_hour=burn,
        exhausts_at=exhausts,
        resets_at=snap.next_reset,
        runs_out_before_reset=_runs_out(exhausts, snap.next_reset),
        source="official",
        as_of=snap.ts,
        notes=tuple(notes),
    )


def _official_burn(ctx: _Ctx, plan: CodingPlan, snap: _Snapshot, by_percentage: bool) -> Decimal | None:
    """Growth per hour between the earliest snapshot of the same window in the hour before ``snap`` and it."""
    s = QuotaSnapshotRow
    conds = [
        s.plan == plan_key(plan.name),
        s.provider == plan.provider,
        s.source == "official",
        s.limit_type == snap.limit_type,
        s.window.is_not_distinct_from(snap.window),
        s.ts >= snap.ts - REQUEST_BURN_WINDOW,
        s.ts < snap.ts,
    ]
    if snap.next_reset is None:
        conds.append(s.next_reset.is_(None))
    else:  # the same window: its reset time, give or take a jitter of the provider's clock
        conds.append(s.next_reset.between(snap.next_reset - _RESET_TOLERANCE, snap.next_reset + _RESET_TOLERANCE))
    value = s.percentage if by_percentage else s.used
    row = ctx.conn.execute(select(s.ts, value).where(*conds, value.is_not(None)).order_by(s.ts).limit(1)).first()
    if row is None:
        return None
    then, earlier = row[0], cast(float, row[1])
    current = snap.percentage if by_percentage else snap.used
    elapsed = snap.ts - then
    if current is None or elapsed < timedelta(minutes=5):
        return None
    if by_percentage:
        current, earlier = min(max(current, 0.0), 100.0), min(max(earlier, 0.0), 100.0)
    growth = Decimal(str(current)) - Decimal(str(earlier))
    return growth / _hours(elapsed) if growth >= 0 else None


# ---------------------------------------------------------------------------------------------------------
# Money: prepaid balances and monthly budgets


@dataclass
class _Converted:
    total: Decimal = Decimal(0)
    rates: set[str] = field(default_factory=set)
    unpriced: int = 0
    unknown_currencies: set[str] = field(default_factory=set)


def _converted_spend(
    ctx: _Ctx, scope: _Scope, start: datetime, end: datetime, to: Currency, *, include_start: bool = True
) -> _Converted:
    """Spend in the range converted to ``to`` with the rate of each hour's day in the display zone."""
    zone = ZoneInfo(ctx.settings.timezone)
    out = _Converted()
    for hour, currency, amount, n in ctx.spend(scope, start, end, include_start=include_start):
        out.unpriced += n
        if currency is None:
            continue
        if currency not in CURRENCIES:
            out.unknown_currencies.add(currency)
            continue
        conversion = ctx.book().convert(Cost(amount, currency), to, hour.astimezone(zone).date())
        out.total += conversion.result.amount
        out.rates.update(r.describe() for r in conversion.used)
    return out


def _money_notes(spent: _Converted, recent: _Converted, span: timedelta | None) -> list[str]:
    notes = [f"burn: spend of the last {_describe_span(span)}"]
    rates = sorted(spent.rates | recent.rates)
    if rates:
        shown = "; ".join(rates[:4]) + (f"; and {len(rates) - 4} more" if len(rates) > 4 else "")
        notes.append(f"converted with {shown}")
    if spent.unpriced:
        notes.append(f"{spent.unpriced} requests reported usage but had no price; they are not counted")
    if spent.unknown_currencies:
        unknown = ", ".join(sorted(spent.unknown_currencies))
        notes.append(f"costs in {unknown} cannot be converted and are not counted")
    return notes


def _money_status(
    ctx: _Ctx,
    plan: PrepaidPlan | MonthlyBudget,
    scope: _Scope,
    start: datetime,
    limit: Decimal,
    currency: Currency,
    resets_at: datetime | None,
    window: str,
    extra_notes: Sequence[str],
) -> QuotaStatus:
    now = ctx.now
    spent = _converted_spend(ctx, scope, start, now, currency) if start <= now else _Converted()
    observed = ctx.burn_span(MONEY_BURN_WINDOW)
    span = observed[0] if observed else None
    recent = (
        _converted_spend(ctx, scope, now - observed[0], now, currency, include_start=observed[1])
        if observed
        else _Converted()
    )
    burn = recent.total / _hours(observed[0]) if observed else Decimal(0)
    used = spent.total.quantize(_MONEY_PLACES)
    exhausts = _project(now, limit - used, burn)
    return QuotaStatus(
        plan=plan.name,
        kind=plan.kind,
        window=window,
        used=used,
        limit=limit,
        unit=currency,
        share=_share(used, limit),
        burn_per_hour=burn.quantize(_MONEY_PLACES),
        exhausts_at=exhausts,
        resets_at=resets_at,
        runs_out_before_reset=_runs_out(exhausts, resets_at),
        source="estimate",
        as_of=now,
        notes=(*extra_notes, *_money_notes(spent, recent, span)),
    )


def _prepaid(ctx: _Ctx, plan: PrepaidPlan) -> list[QuotaStatus]:
    zone = ZoneInfo(ctx.settings.timezone)
    today = ctx.now.astimezone(zone).date()
    start = datetime.combine(plan.as_of, time.min, tzinfo=zone)
    counted = [t for t in plan.topups if plan.as_of <= t.date <= today]
    later = [t for t in plan.topups if t.date > today]
    limit = plan.balance + sum((t.amount for t in counted), Decimal(0))
    notes = [f"balance {plan.balance} {plan.currency} at the start of {plan.as_of} ({ctx.settings.timezone})"]
    if counted:
        notes.append(f"plus {len(counted)} top-ups since then")
    if later:
        notes.append(f"{len(later)} top-ups dated after today are not counted yet")
    notes.append(f"drawn down by the priced usage of {plan.provider}")
    scope = _Scope(providers=(plan.provider,))
    return [_money_status(ctx, plan, scope, start, limit, plan.currency, None, "balance", notes)]


def _monthly_budget(ctx: _Ctx, plan: MonthlyBudget) -> list[QuotaStatus]:
    zone = ZoneInfo(ctx.settings.timezone)
    local = ctx.now.astimezone(zone)
    month_start = datetime(local.year, local.month, 1, tzinfo=zone)
    next_month = datetime(local.year + local.month // 12, local.month % 12 + 1, 1, tzinfo=zone)
    scope = _Scope(providers=tuple(plan.providers) if plan.providers else None)
    where = ", ".join(plan.providers) if plan.providers else "all providers"
    notes = [f"spend on {where} in {local:%Y-%m} ({ctx.settings.timezone})"]
    return [
        _money_status(
            ctx, plan, scope, month_start, plan.amount, plan.currency, next_month.astimezone(UTC), "month", notes
        )
    ]


# ---------------------------------------------------------------------------------------------------------


def quota_statuses(engine: Engine, settings: Settings, *, now: datetime | None = None) -> list[QuotaStatus]:
    """Every configured plan's windows: used, limit, share, burn per hour, projected exhaustion and reset.

    Plans come in config order; a free tier gives one status per configured cap (minute, 5 hours, day), a
    Coding Plan its 5-hour and weekly windows plus any other window the provider's latest fresh snapshot
    reports, a prepaid balance and a monthly budget one each. ``now`` (UTC-aware) defaults to the clock.
    """
    at = datetime.now(UTC) if now is None else now
    if at.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    at = at.astimezone(UTC)
    if not settings.plans:
        return []
    out: list[QuotaStatus] = []
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            # One snapshot for every query: a rollup refresh committing midway cannot skew the figures.
            conn.execution_options(isolation_level="REPEATABLE READ")
        first = conn.execute(select(func.min(UsageEventRow.ts)).where(UsageEventRow.ts <= at)).scalar_one()
        ctx = _Ctx(conn=conn, settings=settings, now=at, capture_start=cast(datetime | None, first))
        for plan in settings.plans:
            if isinstance(plan, FreeTierPlan):
                out.extend(_free_tier(ctx, plan))
            elif isinstance(plan, CodingPlan):
                out.extend(_coding_plan(ctx, plan))
            elif isinstance(plan, PrepaidPlan):
                out.extend(_prepaid(ctx, plan))
            else:
                out.extend(_monthly_budget(ctx, plan))
    return out
