"""Spend: costs by day, month, provider, model and app in JPY, USD and CNY; cache savings; month forecast.

Where the numbers come from:

- Each request's cost was priced when it was recorded (``monitor.pricing``, the price in force on its UTC day)
  in the provider's billing currency; ``rollup_usage_hourly`` keeps exact per-currency sums per UTC hour.
- Days are local days in ``zone`` (default Asia/Tokyo, ``Settings.timezone``). Hourly UTC rollups split exactly
  at local midnight for whole-hour zones; in a half-hour zone (e.g. Asia/Kolkata) each UTC hour counts in the
  local day in which it starts, so up to 30 minutes of spend can land on the neighbouring day.
- Each local day's native sums are converted with that day's rates (``fx.RateBook``: the day's rate, else the
  latest before it, else the default), exactly as ``RateBook.convert`` does; a row spanning several days (a
  month) adds the daily conversions and lists every rate it used.
- Cache savings are what cache reads saved against the full input price:
  ``cached_input_tokens x (input price - cached input price)`` with the prices in force for that provider and
  model on each UTC day (``PriceCatalog.quote`` of one token, so a size-tiered price uses its lowest tier).
  Tokens of unpriced requests (unknown model) count in the hit ratio but save nothing.

Amounts are exact ``Decimal`` (round for display: yen to 0 places, USD and CNY to 2).
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Literal, cast
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import pandas as pd
from sqlalchemy import Connection, Subquery, Table, select

from monitor.analytics._base import (
    DEFAULT_ZONE,
    Db,
    Filters,
    conditions,
    connect,
    day_index_exprs,
    day_number,
    day_of_index,
    empty,
    numbers,
    ratio,
    read_frame,
    total,
    zone_of,
)
from monitor.analytics._days import day_conditions, split_days
from monitor.fx import Rate, RateBook, default_rates
from monitor.models import FxRateRow, UsageDailyRow, UsageHourlyRow
from monitor.money import CURRENCIES, Currency
from monitor.pricing import PriceCatalog, default_catalog
from monitor.rollup import COST_SCALE
from monitor.usage import Usage

__all__ = [
    "COST_MEASURES",
    "CostDim",
    "CostPeriod",
    "SpendForecast",
    "cost_columns",
    "costs",
    "load_rate_book",
    "spend_forecast",
]

CostPeriod = Literal["day", "month", "total"]
CostDim = Literal["provider", "model", "app", "source", "vantage"]
_DIMS: tuple[CostDim, ...] = ("provider", "model", "app", "source", "vantage")
_COUNTS = (
    "requests",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "images",
    "unpriced",
)
COST_MEASURES = (
    *_COUNTS,
    "billed_usd",
    "billed_cny",
    "billed_jpy",
    "jpy",
    "usd",
    "cny",
    "usd_jpy",
    "cny_jpy",
    "fx_day",
    "fx_rates",
    "cache_hit_ratio",
    "cache_savings_jpy",
    "cache_savings_usd",
    "cache_savings_cny",
)
_UNITS = {"USD": "cost_usd_e10", "CNY": "cost_cny_e10", "JPY": "cost_jpy_e10"}
_ZERO = Decimal(0)
_RATE_BASES: tuple[Currency, ...] = ("USD", "CNY")


def cost_columns(by: Sequence[str]) -> list[str]:
    """The columns ``costs`` returns for ``by``."""
    return ["period", *by, *COST_MEASURES]


def load_rate_book(conn: Connection, defaults: dict[Currency, Decimal] | None = None) -> RateBook:
    """Every stored rate (through ``conn``), with ``defaults`` (default 150 / 21 JPY) before the first one."""
    rows = conn.execute(select(FxRateRow.day, FxRateRow.base, FxRateRow.rate, FxRateRow.source)).all()
    rates = [Rate(cast(Currency, base), Decimal(rate), day, source) for day, base, rate, source in rows]
    return RateBook(rates, defaults or default_rates())


class _Converter:
    """Daily conversion factors from a RateBook, computed once per (day, from, to)."""

    def __init__(self, book: RateBook) -> None:
        self.book = book
        self._rates: dict[tuple[Currency, date], Rate] = {}
        self._factors: dict[tuple[date, Currency, Currency], Decimal] = {}

    def rate(self, base: Currency, day: date) -> Rate:
        key = (base, day)
        rate = self._rates.get(key)
        if rate is None:
            rate = self._rates[key] = self.book.rate(base, day)
        return rate

    def factor(self, day: date, src: Currency, dst: Currency) -> Decimal:
        """What ``RateBook.convert`` multiplies by to turn ``src`` into ``dst`` on ``day``."""
        if src == dst:
            return Decimal(1)
        key = (day, src, dst)
        value = self._factors.get(key)
        if value is None:
            value = self._factors[key] = self.rate(src, day).rate / self.rate(dst, day).rate
        return value


class _CacheDiscount:
    """Per (provider, model, UTC day): what one cache-read token saves against the input price, or None."""

    def __init__(self, catalog: PriceCatalog) -> None:
        self.catalog = weakref.proxy(catalog)  # the cache is keyed by the catalog: do not keep it alive
        self._seen: dict[tuple[str, str, date], tuple[Decimal, Currency] | None] = {}

    def per_token(self, provider: str, model: str, day: date) -> tuple[Decimal, Currency] | None:
        key = (provider, model, day)
        if key not in self._seen:
            self._seen[key] = self._lookup(provider, model, day)
        return self._seen[key]

    def _lookup(self, provider: str, model: str, day: date) -> tuple[Decimal, Currency] | None:
        if not model:
            return None
        at = datetime.combine(day, time(12), UTC)
        full = self.catalog.quote(provider, model, Usage(input_tokens=1), at)
        cached = self.catalog.quote(provider, model, Usage(input_tokens=1, cached_input_tokens=1), at)
        if full is None or cached is None or full.cost.currency != cached.cost.currency:
            return None
        return full.cost.amount - cached.cost.amount, full.cost.currency


_discounts: weakref.WeakKeyDictionary[PriceCatalog, _CacheDiscount] = weakref.WeakKeyDictionary()
_discounts_lock = threading.Lock()


def _discount(catalog: PriceCatalog) -> _CacheDiscount:
    """The cache-discount lookups of ``catalog``, kept as long as it lives (a catalog's past prices never change)."""
    with _discounts_lock:
        found = _discounts.get(catalog)
        if found is None:
            found = _discounts[catalog] = _CacheDiscount(catalog)
        return found


def _daily_frame(conn: Connection, filters: Filters, zone: ZoneInfo, dims: Sequence[str]) -> pd.DataFrame:
    """Usage rollup sums per (local day, UTC day, provider, model, dims), summed in SQL; integer columns exact.

    Whole local days come from ``rollup_usage_daily`` when ``zone`` is kept, the rest from the hourly rollup
    (``monitor.analytics._days``); a (local day, UTC day, key) may then appear in two rows, which the callers sum.
    """
    measures = [*_COUNTS, *_UNITS.values()]
    keys = ["provider", "model", *dims]
    names = ["local_day", "utc_day", *keys, *measures]

    def summed(inner: Subquery, dates: Sequence[str] = ()) -> pd.DataFrame:
        group = [inner.c.local_day, inner.c.utc_day, *(inner.c[k] for k in keys)]
        stmt = select(*group, *(total(inner.c[m]).label(m) for m in measures)).group_by(*group)
        return read_frame(conn, stmt, names, dates=dates)

    def hours(part: Filters) -> pd.DataFrame:
        t = cast(Table, UsageHourlyRow.__table__)
        local_day, utc_day = day_index_exprs(conn, t.c.hour, zone, part.start, part.end)
        inner = select(
            local_day.label("local_day"), utc_day.label("utc_day"), *(t.c[k] for k in keys), *(t.c[m] for m in measures)
        ).where(*conditions(t, part, apps=True, sources=True))
        return summed(inner.subquery())

    split = split_days(conn, filters, zone)
    parts = [hours(part) for part in split.hours]
    if split.zone is not None:
        d = cast(Table, UsageDailyRow.__table__)
        inner = select(
            day_number(conn, d.c.day).label("local_day"),
            day_number(conn, d.c.utc_day).label("utc_day"),
            *(d.c[k] for k in keys),
            *(d.c[m] for m in measures),
        ).where(*day_conditions(d, filters, split, apps=True, sources=True))
        parts.append(summed(inner.subquery()))
    parts = [p for p in parts if not p.empty]
    if not parts:
        return empty(names)
    frame = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)
    for name in ["local_day", "utc_day", *measures]:
        frame[name] = numbers(frame[name])
    return frame


def _period_start(day: date, period: CostPeriod, first: date) -> date:
    if period == "day":
        return day
    if period == "month":
        return day.replace(day=1)
    return first


def _objects(values: Any, n: int) -> npt.NDArray[np.object_]:
    out = np.empty(n, dtype=object)
    out[:] = list(values)
    return out


def _group_sums(
    values: npt.NDArray[np.object_], gid: npt.NDArray[np.integer[Any]], groups: int
) -> npt.NDArray[np.object_]:
    """Sums of ``values`` per group id (ids 0..groups-1, rows sorted by id)."""
    if len(values) == groups:  # one row per group (costs per day): nothing to add
        return values
    return np.asarray(pd.Series(values).groupby(gid).sum().to_numpy(), dtype=object)


def _zeros(n: int) -> npt.NDArray[np.object_]:
    return _objects([_ZERO] * n, n)


@dataclass(frozen=True, slots=True)
class _RateInfo:
    usd_jpy: Decimal | None
    cny_jpy: Decimal | None
    fx_day: date | None
    fx_rates: str


def _single(rates: set[Rate]) -> Decimal | None:
    values = {r.rate for r in rates}
    return next(iter(values)) if len(values) == 1 else None


def _rate_info(days: tuple[date, ...], converter: _Converter) -> _RateInfo:
    """The rates a row converted with on ``days``: each base's single rate (None if it varied), latest day, text."""
    used = {base: {converter.rate(base, d) for d in days} for base in _RATE_BASES}
    every = used["USD"] | used["CNY"]
    known = [r.day for r in every if r.day is not None]
    return _RateInfo(
        _single(used["USD"]),
        _single(used["CNY"]),
        max(known) if known else None,
        "; ".join(sorted({r.describe() for r in every})),
    )


def _aggregate(
    frame: pd.DataFrame,
    *,
    period: CostPeriod,
    by: Sequence[str],
    first_day: date,
    converter: _Converter,
    discount: _CacheDiscount | None,
) -> pd.DataFrame:
    """One row per (``period``, ``by``), sorted: exact integer sums (pandas), then Decimal conversions per day.

    Columns: the keys, ``_COUNTS``, ``billed_*``, ``usd``/``cny``/``jpy``, ``savings_*`` (Decimal, exact up to
    Decimal's 28 significant digits) and ``rates`` (``_RateInfo``). Conversions run on object arrays, one
    element per (key, local day) and currency, in (key, day) order, so the same rows always add up alike.
    """
    key = ["period", *by]
    if frame.empty:
        return pd.DataFrame(columns=key)
    days = {int(i): day_of_index(int(i)) for i in frame["local_day"].unique()}
    frame = frame.assign(
        day=frame["local_day"].map(days),
        period=frame["local_day"].map({i: _period_start(d, period, first_day) for i, d in days.items()}),
    )
    units = list(_UNITS.values())
    # One grouping per (key, local day); per day the key already holds the day, so each row is its own group.
    money = frame.groupby([*key, "day"], sort=True, dropna=False)[[*_COUNTS, *units]].sum().reset_index()
    n = len(money)
    gid: npt.NDArray[np.integer[Any]]
    if period == "day":
        gid = np.arange(n)
        out = money.set_index(key)[list(_COUNTS)].copy()
    else:
        gid = money.groupby(key, sort=True, dropna=False).ngroup().to_numpy()
        out = money.groupby(key, sort=True, dropna=False)[list(_COUNTS)].sum()
    day_of_row = money["day"].to_numpy(dtype=object)
    unique_days = list(dict.fromkeys(day_of_row))
    totals = {dst: _zeros(n) for dst in CURRENCIES}
    for currency, column in _UNITS.items():
        src = cast(Currency, currency)
        values = money[column].to_numpy()
        amounts = _zeros(n)
        nz = np.flatnonzero(values)
        if len(nz):
            amounts[nz] = _objects((Decimal(int(v)) for v in values[nz]), len(nz)) / COST_SCALE
            for dst in CURRENCIES:
                if dst == src:  # no conversion: the factor is exactly 1
                    totals[dst][nz] = totals[dst][nz] + amounts[nz]
                    continue
                factor = {d: converter.factor(d, src, dst) for d in unique_days}
                totals[dst][nz] = totals[dst][nz] + amounts[nz] * _objects(
                    map(factor.__getitem__, day_of_row[nz]), len(nz)
                )
        out[f"billed_{currency.lower()}"] = _group_sums(amounts, gid, len(out))
    for dst in CURRENCIES:
        out[dst.lower()] = _group_sums(totals[dst], gid, len(out))
    # Rows are sorted by key, then day: each group's days are one slice.
    bounds = [0, *(np.flatnonzero(np.diff(gid)) + 1).tolist(), n]
    day_list = day_of_row.tolist()
    infos: dict[tuple[date, ...], _RateInfo] = {}
    rates = []
    for a, b in itertools.pairwise(bounds):
        t = tuple(day_list[a:b])
        rates.append(infos.get(t) or infos.setdefault(t, _rate_info(t, converter)))
    out["rates"] = pd.Series(rates, index=out.index, dtype=object)
    for dst in CURRENCIES:
        out[f"savings_{dst.lower()}"] = _zeros(len(out))
    if discount is not None:
        _add_savings(out, frame, key, converter, discount)
    return out.reset_index()


def _add_savings(
    out: pd.DataFrame, frame: pd.DataFrame, key: list[str], converter: _Converter, discount: _CacheDiscount
) -> None:
    """Fill ``out``'s ``savings_*``: cached tokens x (input - cached input price) of their UTC day, converted."""
    cached = frame[frame["cached_input_tokens"] > 0]
    if cached.empty:
        return
    extra = [c for c in ("provider", "model") if c not in key]
    rows = cached.groupby([*key, *extra, "day", "utc_day"], sort=True, dropna=False)["cached_input_tokens"]
    per = rows.sum().reset_index()
    triples = list(zip(per["provider"].tolist(), per["model"].tolist(), per["utc_day"].tolist(), strict=True))
    unit_of = {t: discount.per_token(t[0], t[1], day_of_index(int(t[2]))) for t in set(triples)}
    units = [unit_of[t] for t in triples]
    keep = np.flatnonzero([u is not None and bool(u[0]) for u in units])
    if not len(keep):
        return
    per = per.iloc[keep].reset_index(drop=True)
    kept = [cast(tuple[Decimal, Currency], units[i]) for i in keep]
    tokens = per["cached_input_tokens"].tolist()
    saved = _objects((int(t) * u[0] for t, u in zip(tokens, kept, strict=True)), len(per))
    pairs = list(zip(per["day"].tolist(), (u[1] for u in kept), strict=True))  # (local day, price currency)
    index = pd.MultiIndex.from_frame(per[key]) if len(key) > 1 else pd.Index(per[key[0]])
    rows_of = pd.Series(out.index.get_indexer(index))  # each row's group in ``out`` (every group is there)
    for dst in CURRENCIES:
        factor = {p: converter.factor(p[0], p[1], dst) for p in set(pairs)}
        if all(p[1] == dst for p in factor):  # every price is in ``dst``: nothing to convert
            values = saved
        else:
            values = saved * _objects(map(factor.__getitem__, pairs), len(pairs))
        summed = pd.Series(values).groupby(rows_of).sum()
        column = out[f"savings_{dst.lower()}"].to_numpy(dtype=object, copy=True)
        column[summed.index.to_numpy()] = summed.to_numpy()
        out[f"savings_{dst.lower()}"] = column


def costs(
    db: Db,
    filters: Filters,
    *,
    period: CostPeriod = "day",
    by: Sequence[CostDim] = ("provider", "model"),
    zone: str | ZoneInfo = DEFAULT_ZONE,
    book: RateBook | None = None,
    catalog: PriceCatalog | None = None,
) -> pd.DataFrame:
    """Spend per ``period`` (local ``day``, ``month`` or the whole range: ``total``) and ``by`` dimensions.

    Columns ``cost_columns(by)``: ``period`` (the local date the period starts; for ``total`` the range's
    first local day); the usage counts; ``billed_usd/cny/jpy`` what providers billed in each currency; ``jpy``,
    ``usd``, ``cny`` everything converted; ``usd_jpy`` / ``cny_jpy`` the rates used (None when the row's days
    used different rates), ``fx_day`` the latest rate day used (None: only default rates), ``fx_rates`` every
    rate used, as text; ``cache_hit_ratio`` = cached / input tokens (NaN without input); ``cache_savings_*``.
    ``book`` defaults to the stored rates with the default fallbacks, ``catalog`` to the catalog without config
    overrides (pass ``PriceCatalog(settings.prices)`` to honour them). Rows sorted by period, then ``by``.
    """
    by = list(by)
    bad = [d for d in by if d not in _DIMS]
    if bad:
        raise ValueError(f"cannot group costs by {', '.join(bad)}; choose from {', '.join(_DIMS)}")
    tz = zone_of(zone)
    with connect(db) as conn:
        frame = _daily_frame(conn, filters, tz, [d for d in by if d not in ("provider", "model")])
        if frame.empty:
            return empty(cost_columns(by))
        book = book or load_rate_book(conn)
    first_day = filters.start.astimezone(tz).date()
    table = _aggregate(
        frame,
        period=period,
        by=by,
        first_day=first_day,
        converter=_Converter(book),
        discount=_discount(catalog or default_catalog()),
    )
    rates: list[_RateInfo] = table["rates"].tolist()
    out = table[["period", *by, *_COUNTS]].copy()
    for currency in ("usd", "cny", "jpy"):
        out[f"billed_{currency}"] = table[f"billed_{currency}"]
    for currency in ("jpy", "usd", "cny"):
        out[currency] = table[currency]

    def of_rates(values: list[Any]) -> pd.Series:
        return pd.Series(values, index=out.index, dtype=object)

    out["usd_jpy"] = of_rates([r.usd_jpy for r in rates])
    out["cny_jpy"] = of_rates([r.cny_jpy for r in rates])
    out["fx_day"] = of_rates([r.fx_day for r in rates])
    out["fx_rates"] = of_rates([r.fx_rates for r in rates])
    out["cache_hit_ratio"] = ratio(out["cached_input_tokens"], out["input_tokens"])
    for currency in ("jpy", "usd", "cny"):
        out[f"cache_savings_{currency}"] = table[f"savings_{currency}"]
    for name in _COUNTS:
        out[name] = out[name].astype("int64")
    return out[cost_columns(by)].reset_index(drop=True)


@dataclass(frozen=True, slots=True)
class SpendForecast:
    """Month-to-date spend and the projected end-of-month total in ``currency``; ``method`` says how."""

    as_of: datetime
    zone: str
    currency: Currency
    month: date
    month_to_date: Decimal
    last_7_days: Decimal
    daily_average: Decimal
    days_remaining: Decimal
    forecast: Decimal
    method: str
    has_data: bool


FORECAST_METHOD = (
    "forecast = month-to-date spend + (spend of the last 7 x 24 hours / 7) x days left in the month; "
    "spend in {currency}, each day converted at its own exchange rate"
)


def spend_forecast(
    db: Db,
    filters: Filters | None = None,
    *,
    now: datetime | None = None,
    zone: str | ZoneInfo = DEFAULT_ZONE,
    currency: Currency = "JPY",
    book: RateBook | None = None,
) -> SpendForecast:
    """Month-to-date spend in the local month of ``now`` and a forecast for the month's end.

    Forecast = month-to-date + average daily spend of the last 7 days (168 hours before ``now``, whatever month
    they fall in) x the days (fractional) left until the next local month starts. ``filters`` selects
    providers, models, apps, vantages and sources; its time range is ignored. ``has_data`` is False when there
    was no usage in either window (all amounts are then 0).
    """
    if currency not in CURRENCIES:
        raise ValueError(f"unknown currency {currency!r}; expected one of {', '.join(CURRENCIES)}")
    tz = zone_of(zone)
    at = (now or datetime.now(UTC)).astimezone(UTC)
    local = at.astimezone(tz)
    month = local.date().replace(day=1)
    month_start = datetime.combine(month, time(0), tz).astimezone(UTC)
    nxt = (month + timedelta(days=32)).replace(day=1)
    month_end = datetime.combine(nxt, time(0), tz).astimezone(UTC)
    base = filters or Filters(at, at)

    def spent(conn: Connection, converter: _Converter, start: datetime) -> tuple[Decimal, bool]:
        frame = _daily_frame(conn, base.with_range(start, at), tz, [])
        table = _aggregate(frame, period="total", by=[], first_day=month, converter=converter, discount=None)
        return sum(table[currency.lower()].tolist(), _ZERO) if len(table) else _ZERO, not frame.empty

    with connect(db) as conn:
        converter = _Converter(book or load_rate_book(conn))
        mtd, mtd_rows = spent(conn, converter, month_start)
        last7, last7_rows = spent(conn, converter, at - timedelta(days=7))
    daily = last7 / 7
    remaining = Decimal(str((month_end - at).total_seconds())) / 86_400
    return SpendForecast(
        as_of=at,
        zone=str(tz),
        currency=currency,
        month=month,
        month_to_date=mtd,
        last_7_days=last7,
        daily_average=daily,
        days_remaining=remaining,
        forecast=mtd + daily * remaining,
        method=FORECAST_METHOD.format(currency=currency),
        has_data=bool(mtd_rows or last7_rows),
    )
