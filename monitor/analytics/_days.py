"""Reading a time range as whole local days from the daily rollups plus the partial days from the hourly ones.

``monitor.rollup_days`` keeps, for each zone listed in ``rollup_zones``, daily rows equal to the sum of the
hourly rows of each local day. A range ``[start, end)`` is split into the whole local days it covers (read from
the daily tables: one row per day instead of 24) and at most two stretches of hours before and after them
(read from the hourly tables). When the zone is not kept, or the range holds no whole day, everything is read
from the hours, so results never depend on which tables were read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pandas as pd
from sqlalchemy import ColumnElement, Connection, Table, func, select

from monitor.analytics._base import (
    Filters,
    Granularity,
    empty,
    local_midnight,
    numbers,
    read_frame,
    selections,
    total,
)
from monitor.analytics._base import grouped as hourly_grouped
from monitor.rollup_days import day_hours, kept_zones

__all__ = ["DaySplit", "day_conditions", "grouped", "split_days"]

_PREFERRED_ANY = "UTC"


@dataclass(frozen=True, slots=True)
class DaySplit:
    """How to read ``filters``: whole days ``first``..``last`` (inclusive) of ``zone`` from the daily tables and
    the ``hours`` parts from the hourly ones. ``zone`` is None when nothing is read from the daily tables."""

    zone: ZoneInfo | None
    first: date | None
    last: date | None
    hours: tuple[Filters, ...]

    def first_hours(self, days: pd.Series) -> pd.Series:
        """The first UTC hour (aware) of each local day in ``days`` (``datetime.date`` values)."""
        zone = self.zone
        assert zone is not None
        starts = {d: day_hours(zone, d)[0] for d in days.unique()}
        return pd.to_datetime(days.map(starts), utc=True)


def split_days(conn: Connection, filters: Filters, zone: ZoneInfo | None) -> DaySplit:
    """Split ``filters`` into whole days of ``zone`` (None: any kept zone; for totals over the range) and hours.

    A day is whole when every UTC hour starting in it is selected by ``filters`` (an hour is selected when its
    start lies in ``[start, end)``).
    """
    every = DaySplit(None, None, None, (filters,))
    kept = kept_zones(conn)
    if zone is None:
        if not kept:
            return every
        zone = ZoneInfo(_PREFERRED_ANY if _PREFERRED_ANY in kept else kept[0])
    elif str(zone) not in kept:
        return every
    first = filters.start.astimezone(zone).date()
    if day_hours(zone, first)[0] < filters.start:
        first += timedelta(days=1)
    last = filters.end.astimezone(zone).date()
    # The last day is whole when its last hour starts before ``end``.
    while last >= first and day_hours(zone, last)[1] - timedelta(hours=1) >= filters.end:
        last -= timedelta(days=1)
    if last < first:
        return every
    begin, _ = day_hours(zone, first)
    _, finish = day_hours(zone, last)
    hours = tuple(
        filters.with_range(a, b) for a, b in ((filters.start, begin), (finish, filters.end)) if _has_hours(a, b)
    )
    return DaySplit(zone, first, last, hours)


def _has_hours(start: datetime, end: datetime) -> bool:
    """Whether any whole UTC hour starts in [start, end)."""
    if end <= start:
        return False
    first = start.replace(minute=0, second=0, microsecond=0)
    if first < start:
        first += timedelta(hours=1)
    return first < end


def day_conditions(
    table: Table, filters: Filters, split: DaySplit, *, apps: bool = False, sources: bool = False
) -> list[ColumnElement[bool]]:
    """WHERE conditions selecting the split's whole days and ``filters``'s selections from a daily table."""
    assert split.zone is not None and split.first is not None and split.last is not None
    c = table.c
    return [
        c.zone == str(split.zone),
        c.day >= split.first,
        c.day <= split.last,
        *selections(table, filters, apps=apps, sources=sources),
    ]


def grouped(
    conn: Connection,
    table: Table,
    filters: Filters,
    *,
    daily: Table | None,
    granularity: Granularity | None,
    zone: ZoneInfo,
    dims: Sequence[str],
    sums: Sequence[str] = (),
    maxes: Sequence[str] = (),
    only: Mapping[str, Sequence[str]] | None = None,
    apps: bool = False,
    sources: bool = False,
) -> pd.DataFrame:
    """``_base.grouped`` (sums and maxima per period and ``dims``), reading whole days from ``daily``.

    ``only`` keeps rows whose column (e.g. ``source``) has one of the listed values. For local days
    (``granularity="day"``, days of ``zone``) or the whole range (None) the whole days come from ``daily`` (a
    daily table with the same columns, keyed by ``zone`` and ``day``) and the rest from ``table``; per hour,
    everything from ``table``. Same result either way.
    """
    only = only or {}

    def where(t: Table) -> list[ColumnElement[bool]]:
        return [t.c[name].in_(values) for name, values in only.items()]

    def hourly(part: Filters) -> pd.DataFrame:
        return hourly_grouped(
            conn,
            table,
            part,
            granularity=granularity,
            zone=zone,
            dims=dims,
            sums=sums,
            maxes=maxes,
            where=where(table),
            apps=apps,
            sources=sources,
        )

    if daily is None or granularity == "hour":
        return hourly(filters)
    split = split_days(conn, filters, zone if granularity == "day" else None)
    if split.zone is None:
        return hourly(filters)
    parts = [hourly(part) for part in split.hours]
    keys = (["period"] if granularity == "day" else []) + list(dims)
    period = [daily.c.day.label("period")] if granularity == "day" else []
    inner = (
        select(*period, *(daily.c[d] for d in dims), *(daily.c[s] for s in sums), *(daily.c[m] for m in maxes))
        .where(*day_conditions(daily, filters, split, apps=apps, sources=sources), *where(daily))
        .subquery()
    )
    group = [inner.c[k] for k in keys]
    stmt = select(*group, *(total(inner.c[s]).label(s) for s in sums), *(func.max(inner.c[m]).label(m) for m in maxes))
    if group:
        stmt = stmt.group_by(*group)
    names = [*keys, *sums, *maxes]
    days = read_frame(conn, stmt, names, dates=["period"] if granularity == "day" else [])
    if not days.empty and not (not keys and days.iloc[0].isna().all()):
        for s in sums:
            days[s] = numbers(days[s])
        if granularity == "day":
            days["period"] = local_midnight(days["period"], zone)
        parts.append(days)
    parts = [p for p in parts if not p.empty]
    if not parts:
        return empty(names)
    if len(parts) == 1:
        return parts[0]
    frame = pd.concat(parts, ignore_index=True)
    for m in maxes:
        frame[m] = pd.to_numeric(frame[m]).astype("float64")
    aggs: dict[str, str] = {**dict.fromkeys(sums, "sum"), **dict.fromkeys(maxes, "max")}
    if not keys:
        return pd.DataFrame([{name: frame[name].agg(how) for name, how in aggs.items()}], columns=names)
    return frame.groupby(keys, sort=False, dropna=False).agg(aggs).reset_index()[names]
