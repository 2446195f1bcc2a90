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
from operator import itemgetter
from typing import Any, Literal, cast
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import pandas as pd
from sqlalchemy import Connection, Subquery, Table, case, select

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
    fetch_rows,
    numbers,
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
        self._seen: dict[tuple[str, str, int], tuple[Decimal, Currency] | None] = {}

    def per_token(self, keys: list[tuple[str, str, int]]) -> list[tuple[Decimal, Currency] | None]:
        """For each (provider, model, UTC day as a day number, see ``day_of_index``): (saving, currency) or None."""
        seen = self._seen
        for key in keys:
            if key not in seen:
                seen[key] = self._lookup(key[0], key[1], day_of_index(key[2]))
        return [seen[key] for key in keys]

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


@dataclass(frozen=True, slots=True)
class _Rows:
    """Usage rollup sums per (local day, provider, model, dims) as columns; a key may repeat (its rows add up).

    Days are day numbers (``day_of_index``); ``keys`` holds provider, model and the dims, ``sums`` the exact
    integer sums of ``_COUNTS`` and ``_UNITS``, and ``cached`` the cached input tokens by UTC day: column ``i``
    those of UTC day ``local_day + i - 1`` (a local day of any zone lies within three UTC days, as UTC offsets
    are under 24 hours; prices, and so cache savings, go by UTC day).
    """

    local_day: npt.NDArray[np.int64]
    keys: dict[str, list[str]]
    sums: dict[str, npt.NDArray[np.int64]]
    cached: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.local_day)


def _column(rows: list[Any], index: int) -> npt.NDArray[np.int64]:
    """Column ``index`` of ``rows`` as exact int64: drivers return the sums as ints (one driver fills a column, so
    the first value tells its type); anything else (``Decimal``, NULL) goes through ``numbers``."""
    if not rows:
        return np.zeros(0, dtype=np.int64)
    if type(rows[0][index]) is int:
        return np.fromiter(map(itemgetter(index), rows), dtype=np.int64, count=len(rows))
    return numbers(pd.Series([row[index] for row in rows], dtype=object)).to_numpy(dtype=np.int64)


def _daily_rows(conn: Connection, filters: Filters, zone: ZoneInfo, dims: Sequence[str]) -> _Rows:
    """Usage rollup sums per (local day, provider, model, dims), summed in SQL; integers exact.

    Whole local days come from ``rollup_usage_daily`` when ``zone`` is kept, the rest from the hourly rollup
    (``monitor.analytics._days``); a (local day, key) may then appear in several rows, which the callers sum.
    Rows are read as plain columns (a frame's conversions cost more than the sums they carry).
    """
    measures = [m for m in (*_COUNTS, *_UNITS.values()) if m != "cached_input_tokens"]
    keys = ["provider", "model", *dims]
    by_step = conn.dialect.name == "postgresql"

    def summed(inner: Subquery) -> list[Any]:
        """``inner``'s sums per (local day, keys); its ``local``/``utc`` columns compare the local and UTC days.

        Cached tokens: on SQLite three sums by UTC day (before, on, after the local day), as sorting rows for
        its GROUP BY costs more than the conditions; on Postgres one sum per row of each UTC day (``utc -
        local``, a number of days), as its hash aggregation takes twice the groups better than the conditions.
        """
        c = inner.c
        if by_step:
            step = (c.utc - c.local).label("step")
            group = [c.local_day, *(c[k] for k in keys), step]
            cached = [total(c.cached_input_tokens).label("cached")]
        else:
            group = [c.local_day, *(c[k] for k in keys)]
            tests = (c.utc < c.local, c.utc == c.local, c.utc > c.local)
            cached = [
                total(case((t, c.cached_input_tokens), else_=0)).label(f"cached_{i}") for i, t in enumerate(tests)
            ]
        stmt = select(*group, *(total(c[m]).label(m) for m in measures), *cached).group_by(*group)
        return fetch_rows(conn, stmt)

    def hours(part: Filters) -> list[Any]:
        t = cast(Table, UsageHourlyRow.__table__)
        local_day, utc_day = day_index_exprs(conn, t.c.hour, zone, part.start, part.end)
        inner = select(
            local_day.label("local_day"),
            local_day.label("local"),
            utc_day.label("utc"),
            *(t.c[k] for k in keys),
            *(t.c[m] for m in [*measures, "cached_input_tokens"]),
        ).where(*conditions(t, part, apps=True, sources=True))
        return summed(inner.subquery())

    split = split_days(conn, filters, zone)
    rows: list[Any] = []
    for part in split.hours:
        rows += hours(part)
    if split.zone is not None:
        d = cast(Table, UsageDailyRow.__table__)
        inner = select(
            day_number(conn, d.c.day).label("local_day"),
            d.c.day.label("local"),  # dates compare as they are (on SQLite as ISO text): no conversion per row
            d.c.utc_day.label("utc"),
            *(d.c[k] for k in keys),
            *(d.c[m] for m in [*measures, "cached_input_tokens"]),
        ).where(*day_conditions(d, filters, split, apps=True, sources=True))
        rows += summed(inner.subquery())
    first = 1 + len(keys) + by_step
    sums = {m: _column(rows, first + i) for i, m in enumerate(measures)}
    if by_step:
        cached = np.zeros((len(rows), 3), dtype=np.int64)
        cached[np.arange(len(rows)), _column(rows, first - 1) + 1] = _column(rows, first + len(measures))
    else:
        cached = np.stack([_column(rows, first + len(measures) + i) for i in range(3)], axis=1)
    sums["cached_input_tokens"] = cached.sum(axis=1)
    return _Rows(
        local_day=_column(rows, 0),
        keys={k: list(map(itemgetter(1 + i), rows)) for i, k in enumerate(keys)},
        sums=sums,
        cached=cached,
    )


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


_to_decimal = np.frompyfunc(Decimal, 1, 1)
"""``Decimal`` of each element of an object array (Python ints: exact)."""


def _zeros(n: int) -> npt.NDArray[np.object_]:
    return np.full(n, _ZERO, dtype=object)


def _codes(values: list[str]) -> tuple[npt.NDArray[np.intp], list[str]]:
    """Each value's rank among the distinct values sorted, and those values: sorting by rank sorts by value."""
    distinct = sorted(set(values))
    rank = {v: i for i, v in enumerate(distinct)}
    return np.fromiter(map(rank.__getitem__, values), dtype=np.intp, count=len(values)), distinct


def _runs(columns: Sequence[npt.NDArray[Any]]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Rows sorted by ``columns`` (the first one first; stable): (the sorting order, where each run of rows
    with equal values starts in it). Like a sorted ``groupby`` of the columns, in numpy."""
    order = np.lexsort(tuple(reversed(columns)))  # lexsort's last key is its primary one
    return order, _run_starts([column[order] for column in columns])


def _run_starts(columns: Sequence[npt.NDArray[Any]]) -> npt.NDArray[np.intp]:
    """Where a run of equal values (in every one of ``columns``, sorted alike) starts."""
    n = len(columns[0]) if columns else 0
    change = np.zeros(n, dtype=bool)
    if n:
        change[0] = True
    for column in columns:
        change[1:] |= column[1:] != column[:-1]
    return np.flatnonzero(change)


def _run_ids(starts: npt.NDArray[np.intp], n: int) -> npt.NDArray[np.intp]:
    """For each of ``n`` sorted rows, its run's number (runs start at ``starts``)."""
    first = np.zeros(n, dtype=np.intp)
    first[starts] = 1
    return np.cumsum(first) - 1


def _sums(values: npt.NDArray[np.object_], starts: npt.NDArray[np.intp] | None) -> npt.NDArray[np.object_]:
    """Per group (the rows from each of ``starts`` to the next), its values added in row order, starting from
    the first (as pandas' groupby sum does, so results keep their digits); ``starts`` None: one row per group."""
    if starts is None or len(starts) == len(values):
        return values
    return np.asarray(np.add.reduceat(values, starts), dtype=object)


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


@dataclass(frozen=True, slots=True)
class _Table:
    """``_aggregate``'s groups, one entry per (period, ``by``) in sorted order: ``period`` (start dates) and
    ``keys`` (``by`` values) as object arrays, ``counts`` (``_COUNTS``, int64), ``money`` (``billed_*``,
    ``usd``/``cny``/``jpy`` and ``savings_*``: Decimal object arrays), and each group's rates:
    ``infos[info_of_group[i]]``."""

    period: npt.NDArray[np.object_]
    keys: dict[str, npt.NDArray[np.object_]]
    counts: dict[str, npt.NDArray[np.int64]]
    money: dict[str, npt.NDArray[np.object_]]
    infos: list[_RateInfo]
    info_of_group: npt.NDArray[np.intp]

    def __len__(self) -> int:
        return len(self.period)

    def rates(self, field: str) -> npt.NDArray[np.object_]:
        """One ``_RateInfo`` field per group."""
        return _objects((getattr(info, field) for info in self.infos), len(self.infos))[self.info_of_group]


def _aggregate(
    rows: _Rows,
    *,
    period: CostPeriod,
    by: Sequence[str],
    first_day: date,
    converter: _Converter,
    discount: _CacheDiscount | None,
) -> _Table:
    """One group per (``period``, ``by``), sorted: exact integer sums (numpy), then Decimal conversions per day.

    Money is added up as it always was, so the same rows give the same digits: one Decimal per (group, local
    day) and currency, converted with the day's factor, then added in (group, day) order. The grouping, the
    sorting and the integer sums run on integer codes in numpy, and each distinct day, rate and price is looked
    up once.
    """
    days = {int(i): day_of_index(int(i)) for i in np.unique(rows.local_day)}
    distinct_days = list(days)  # sorted
    day_of_row = np.searchsorted(distinct_days, rows.local_day)  # each row's day in ``distinct_days``
    starts_of = [_period_start(d, period, first_day) for d in days.values()]
    period_code = np.asarray([p.toordinal() for p in starts_of], dtype=np.int64)[day_of_row]
    codes: dict[str, npt.NDArray[np.intp]] = {}
    distinct: dict[str, list[str]] = {}
    for name, values in rows.keys.items():
        codes[name], distinct[name] = _codes(values)
    group_keys = [period_code, *(codes[k] for k in by)]

    # Rows per (period, by, local day): the "money rows", each converted with its day's rates.
    order, starts = _runs([*group_keys, rows.local_day])
    n = len(starts)
    run_of_row = np.empty(len(rows), dtype=np.intp)
    run_of_row[order] = _run_ids(starts, len(rows))
    first_rows = order[starts]
    sums = {m: np.add.reduceat(values[order], starts) for m, values in rows.sums.items()}
    slot = day_of_row[first_rows]  # each money row's day in ``distinct_days``
    # Groups (period, by): money rows are sorted by them, so each group is one slice of money rows.
    group_starts = _run_starts([keys[first_rows] for keys in group_keys])
    groups = len(group_starts)
    per_group = None if groups == n else group_starts
    first_runs = first_rows[group_starts]

    counts = {c: sums[c] if per_group is None else np.add.reduceat(sums[c], group_starts) for c in _COUNTS}
    money: dict[str, npt.NDArray[np.object_]] = {}
    totals = {dst: _zeros(n) for dst in CURRENCIES}
    for currency, column in _UNITS.items():
        src = cast(Currency, currency)
        units = sums[column]
        amounts = _zeros(n)
        nz = np.flatnonzero(units)
        if len(nz):
            converted = _to_decimal(units[nz].astype(object)) / COST_SCALE
            amounts[nz] = converted
            for dst in CURRENCIES:
                if dst == src:  # no conversion: the factor is exactly 1
                    totals[dst][nz] = totals[dst][nz] + converted
                    continue
                factor = _objects((converter.factor(d, src, dst) for d in days.values()), len(days))
                totals[dst][nz] = totals[dst][nz] + converted * factor[slot[nz]]
        money[f"billed_{currency.lower()}"] = _sums(amounts, per_group)
    for dst in CURRENCIES:
        money[dst.lower()] = _sums(totals[dst], per_group)

    # The rates each group used: one lookup per distinct list of days.
    infos: list[_RateInfo] = []
    if per_group is None:  # one day per group
        infos = [_rate_info((d,), converter) for d in days.values()]
        info_of_group = slot
    else:
        seen: dict[tuple[int, ...], int] = {}
        found = []
        for a, b in itertools.pairwise([*group_starts.tolist(), n]):
            t = tuple(slot[a:b].tolist())
            if t not in seen:
                seen[t] = len(infos)
                infos.append(_rate_info(tuple(days[distinct_days[i]] for i in t), converter))
            found.append(seen[t])
        info_of_group = np.asarray(found, dtype=np.intp)

    for dst in CURRENCIES:
        money[f"savings_{dst.lower()}"] = _zeros(groups)
    if discount is not None:
        group_of_row = _run_ids(group_starts, n)[run_of_row]
        _add_savings(money, rows, codes, distinct, by, group_of_row, days, converter, discount)
    periods = _objects(starts_of, len(starts_of))[day_of_row[first_runs]]
    return _Table(
        period=periods,
        keys={k: _objects(distinct[k], len(distinct[k]))[codes[k][first_runs]] for k in by},
        counts=counts,
        money=money,
        infos=infos,
        info_of_group=info_of_group,
    )


def _add_savings(
    money: dict[str, npt.NDArray[np.object_]],
    rows: _Rows,
    codes: dict[str, npt.NDArray[np.intp]],
    distinct: dict[str, list[str]],
    by: Sequence[str],
    group_of_row: npt.NDArray[np.intp],
    days: dict[int, date],
    converter: _Converter,
    discount: _CacheDiscount,
) -> None:
    """Fill ``money``'s ``savings_*``: cached tokens x (input - cached input price) of their UTC day, converted.

    Tokens are summed per (group, provider and model where ``by`` lacks them, local day, UTC day), and each
    sum's saving is converted at its local day's rates, then added up per group in that order.
    """
    row, offset = np.nonzero(rows.cached > 0)  # one entry per row and UTC day with cached tokens
    if not len(row):
        return
    extra = [c for c in ("provider", "model") if c not in by]
    local_day = rows.local_day[row]
    utc_day = local_day + offset - 1
    order, starts = _runs([group_of_row[row], *(codes[c][row] for c in extra), local_day, utc_day])
    tokens = np.add.reduceat(rows.cached[row, offset][order], starts)
    first = order[starts]  # the first entry of each sum
    row, local_day, utc_day = row[first], local_day[first], utc_day[first]
    # One price lookup per distinct (provider, model, UTC day).
    provider, model = codes["provider"][row], codes["model"][row]
    distinct_models = _objects(distinct["model"], len(distinct["model"]))
    low, models = int(utc_day.min()), len(distinct_models)
    span = int(utc_day.max()) - low + 1
    triples, which = np.unique(
        (provider.astype(np.int64) * models + model) * span + (utc_day - low), return_inverse=True
    )
    per_token = np.empty(len(triples), dtype=object)
    currency = np.full(len(triples), -1, dtype=np.intp)  # the price's index in CURRENCIES; -1: saves nothing
    currency_index = {c: i for i, c in enumerate(CURRENCIES)}
    pm, day = np.divmod(triples, span)
    providers = _objects(distinct["provider"], len(distinct["provider"]))[pm // models].tolist()
    models_of = distinct_models[pm % models].tolist()
    units = discount.per_token(list(zip(providers, models_of, (low + day).tolist(), strict=True)))
    for i, unit in enumerate(units):
        if unit is not None and unit[0]:
            per_token[i], currency[i] = unit[0], currency_index[unit[1]]
    keep = np.flatnonzero(currency[which] >= 0)
    if not len(keep):
        return
    which = which[keep]
    saved = tokens[keep].astype(object) * per_token[which]  # Python int x Decimal: exact
    price_currency = currency[which]
    group = group_of_row[row[keep]]
    group_starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    targets = group[group_starts]
    # One factor per distinct (local day, price currency).
    local = local_day[keep]
    first_day = int(local.min())
    pairs, pair_of = np.unique((local - first_day) * len(CURRENCIES) + price_currency, return_inverse=True)
    pair_days = [days[first_day + int(p) // len(CURRENCIES)] for p in pairs.tolist()]
    pair_currencies = [CURRENCIES[int(p) % len(CURRENCIES)] for p in pairs.tolist()]
    for index, dst in enumerate(CURRENCIES):
        if (price_currency == index).all():  # every price is in ``dst``: nothing to convert
            values = saved
        else:
            factor = _objects(map(converter.factor, pair_days, pair_currencies, [dst] * len(pairs)), len(pairs))
            values = saved * factor[pair_of]
        money[f"savings_{dst.lower()}"][targets] = _sums(values, group_starts)


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
        rows = _daily_rows(conn, filters, tz, [d for d in by if d not in ("provider", "model")])
        if not len(rows):
            return empty(cost_columns(by))
        book = book or load_rate_book(conn)
    first_day = filters.start.astimezone(tz).date()
    table = _aggregate(
        rows,
        period=period,
        by=by,
        first_day=first_day,
        converter=_Converter(book),
        discount=_discount(catalog or default_catalog()),
    )

    def objects(values: npt.NDArray[np.object_]) -> pd.Series:
        return pd.Series(values, dtype=object, copy=False)  # object, even for text (``fx_rates``)

    cached = table.counts["cached_input_tokens"].astype("float64")
    inputs = table.counts["input_tokens"].astype("float64")
    inputs[inputs == 0] = np.nan
    columns: dict[str, Any] = {
        "period": objects(table.period),
        **{k: pd.array(table.keys[k], dtype="str") for k in by},
        **{name: table.counts[name].astype("int64", copy=False) for name in _COUNTS},
        **{f"billed_{c}": table.money[f"billed_{c}"] for c in ("usd", "cny", "jpy")},
        **{c: table.money[c] for c in ("jpy", "usd", "cny")},
        **{name: objects(table.rates(name)) for name in ("usd_jpy", "cny_jpy", "fx_day", "fx_rates")},
        "cache_hit_ratio": cached / inputs,  # NaN without input tokens
        **{f"cache_savings_{c}": table.money[f"savings_{c}"] for c in ("jpy", "usd", "cny")},
    }
    return pd.DataFrame(columns, columns=cost_columns(by))


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
        rows = _daily_rows(conn, base.with_range(start, at), tz, [])
        if not len(rows):
            return _ZERO, False
        table = _aggregate(rows, period="total", by=[], first_day=month, converter=converter, discount=None)
        return sum(table.money[currency.lower()].tolist(), _ZERO), True

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
