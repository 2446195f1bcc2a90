"""Daily rollups per zone: the hourly rollups summed per local day, so that long ranges read one row per day.

A month of hourly rows per target is 720 rows; six months of them made the 30-day and 6-month views of the
analytics read (and, for latency, decode and merge) hundreds of thousands of rows. The daily tables
(``rollup_probe_daily``, ``rollup_usage_daily``, ``rollup_outcome_daily`` in ``monitor.models``) hold the same
sums (histograms merged bucket by bucket) per local day of each *kept zone*; ``monitor.analytics`` reads whole
days from them and only the partial days at the ends of a range from the hourly tables.

The contract a reader relies on: **for every zone listed in ``rollup_zones``, each day's daily rows equal the sum
of the hourly rows of the UTC hours that start in that local day**, at every commit. It holds because:

- days are recomputed whole, from the hourly rows, in the same transaction that recomputed any of their hours
  (``recompute_days``, called by ``monitor.rollup`` for every batch of hours it recomputes);
- a zone is listed only after all its days were built from the hourly rows (``keep_zones``, under the
  refresh lock), and zones are never unlisted, so every refresher keeps every listed zone, whatever zones it
  was asked for (two daemons with different display zones both keep both).

A UTC hour belongs to the local day in which it starts (exact for whole-hour zones; in a half-hour zone up to 30
minutes land on the neighbouring day), the same rule as ``monitor.analytics``. Usage rows also keep the UTC day
(``utc_day``), because prices change on UTC days and a local day spans up to two of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal, cast
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from sqlalchemy import ColumnElement, Connection, Table, delete, func, insert, select

from monitor.models import (
    OutcomeDailyRow,
    OutcomeHourlyRow,
    OutcomeMeasures,
    ProbeDailyRow,
    ProbeHourlyRow,
    ProbeMeasures,
    RollupZoneRow,
    UsageDailyRow,
    UsageHourlyRow,
    UsageMeasures,
)

__all__ = [
    "DEFAULT_DAY_ZONES",
    "day_hours",
    "days_touched",
    "keep_zones",
    "kept_zones",
    "recompute_days",
]

Dataset = Literal["probe_results", "usage_events"]

DEFAULT_DAY_ZONES: tuple[str, ...] = ("UTC", "Asia/Shanghai", "Asia/Tokyo")
"""Zones kept by default: UTC (zone-free totals), China (the providers' peak hours) and Japan (the default display)."""

_HOUR = timedelta(hours=1)
_DAYS_PER_BATCH = 31  # days rebuilt per statement set when a zone is first kept


@dataclass(frozen=True, slots=True)
class _Tier:
    hourly: Table
    daily: Table
    keys: tuple[str, ...]
    sums: tuple[str, ...]
    maxes: tuple[str, ...] = ()
    hists: tuple[str, ...] = ()
    utc_day: bool = False
    scope: Callable[[Table], ColumnElement[bool]] | None = None  # which rows of a table shared by both datasets


def _t(model: Any) -> Table:
    return cast(Table, model.__table__)


def _tier(
    hourly: Any,
    daily: Any,
    keys: tuple[str, ...],
    measures: type,
    *,
    maxes: tuple[str, ...] = (),
    utc_day: bool = False,
    scope: Callable[[Table], ColumnElement[bool]] | None = None,
) -> _Tier:
    """The tier of two rollup models sharing the ``measures`` mixin: histograms merge, ``maxes`` take the
    maximum, everything else adds up."""
    names = tuple(measures.__annotations__)
    hists = tuple(n for n in names if n.endswith("_hist"))
    sums = tuple(n for n in names if n not in hists and n not in maxes)
    return _Tier(_t(hourly), _t(daily), keys, sums, maxes, hists, utc_day, scope)


_PROBE = _tier(
    ProbeHourlyRow, ProbeDailyRow, ("provider", "model", "vantage"), ProbeMeasures, maxes=("retry_after_max_s",)
)
_USAGE = _tier(
    UsageHourlyRow, UsageDailyRow, ("provider", "model", "vantage", "app", "source"), UsageMeasures, utc_day=True
)


def _outcome_tier(probe: bool) -> _Tier:
    return _tier(
        OutcomeHourlyRow,
        OutcomeDailyRow,
        ("source", "provider", "model", "vantage", "app", "outcome", "error_code"),
        OutcomeMeasures,
        scope=(lambda t: t.c.source == "probe") if probe else (lambda t: t.c.source != "probe"),
    )


_TIERS: dict[Dataset, tuple[_Tier, ...]] = {
    "probe_results": (_PROBE, _outcome_tier(True)),
    "usage_events": (_USAGE, _outcome_tier(False)),
}


# --- days and hours -----------------------------------------------------------------------------------------


def _local_date(hour: datetime, zone: ZoneInfo) -> date:
    return hour.astimezone(zone).date()


def day_hours(zone: ZoneInfo, day: date) -> tuple[datetime, datetime]:
    """[first, end): the UTC hours (whole hours, aware) whose start falls in local ``day`` of ``zone``."""

    def first_hour_of(d: date) -> datetime:
        guess = datetime.combine(d, time(0), zone).astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        # The guess is within an hour of the answer; walk to the first hour whose local date is d or later.
        while _local_date(guess, zone) >= d:
            guess -= _HOUR
        while _local_date(guess, zone) < d:
            guess += _HOUR
        return guess

    return first_hour_of(day), first_hour_of(day + timedelta(days=1))


def days_touched(zone: ZoneInfo, start: datetime, end: datetime) -> list[date]:
    """The local days of ``zone`` holding any UTC hour that starts in [start, end) (both whole hours)."""
    if end <= start:
        return []
    first, last = _local_date(start, zone), _local_date(end - _HOUR, zone)
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _day_of_hours(hours: pd.Series, zone: ZoneInfo) -> pd.Series:
    """The local date (as ``datetime.date``) of each UTC hour."""
    return pd.to_datetime(hours, utc=True).dt.tz_convert(zone).dt.date


# --- recomputing --------------------------------------------------------------------------------------------


def _merge_hists(keys: np.ndarray, blobs: Sequence[bytes]) -> dict[int, bytes]:
    """Per group id in ``keys`` (one per blob), the packed histogram of the blobs' summed counts."""
    lengths = np.fromiter((len(b) // 8 for b in blobs), dtype=np.int64, count=len(blobs))
    flat = np.frombuffer(b"".join(blobs), dtype="<i4").astype(np.int64).reshape(-1, 2)
    groups = np.repeat(keys.astype(np.int64), lengths)
    if not len(flat):
        return {}
    # (group, bucket) pairs summed; buckets stay sorted inside each group, as pack_hist stores them.
    combined = groups * 4096 + (flat[:, 0] + 2048)
    uniq, inverse = np.unique(combined, return_inverse=True)
    counts = np.bincount(inverse, weights=flat[:, 1]).astype(np.int64)
    group_of, bucket_of = uniq // 4096, uniq % 4096 - 2048
    out: dict[int, bytes] = {}
    bounds = np.flatnonzero(np.diff(group_of)) + 1
    for part in np.split(np.arange(len(uniq)), bounds):
        pairs = np.empty((len(part), 2), dtype="<i4")
        pairs[:, 0], pairs[:, 1] = bucket_of[part], counts[part]
        out[int(group_of[part[0]])] = pairs.tobytes()
    return out


def _read_hours(conn: Connection, tier: _Tier, start: datetime, end: datetime) -> pd.DataFrame:
    h = tier.hourly
    names = ["hour", *tier.keys, *tier.sums, *tier.maxes, *tier.hists]
    where = [h.c.hour >= start, h.c.hour < end]
    if tier.scope is not None:
        where.append(tier.scope(h))
    rows = conn.execute(select(*(h.c[n] for n in names)).where(*where)).all()
    return pd.DataFrame.from_records(rows, columns=names)


def _daily_rows(frame: pd.DataFrame, tier: _Tier, zone: ZoneInfo) -> list[dict[str, Any]]:
    """The daily rows of ``tier`` summed from its hourly rows in ``frame``."""
    if frame.empty:
        return []
    frame = frame.assign(day=_day_of_hours(frame["hour"], zone))
    group = ["day", *(["utc_day"] if tier.utc_day else []), *tier.keys]
    if tier.utc_day:
        frame["utc_day"] = pd.to_datetime(frame["hour"], utc=True).dt.date
    # Sorted groups: ngroup() numbers them in the order of the aggregated rows.
    grouped = frame.groupby(group, sort=True, dropna=False)
    out = grouped[list(tier.sums)].sum()
    for name in tier.maxes:
        out[name] = grouped[name].max()
    if tier.hists:
        ids = grouped.ngroup().to_numpy()
        for name in tier.hists:
            merged = _merge_hists(ids, frame[name].tolist())
            out[name] = [merged.get(i, b"") for i in range(len(out))]
    out = out.reset_index()
    records = cast(list[dict[str, Any]], out.to_dict("records"))
    zone_name = str(zone)
    for r in records:
        r["zone"] = zone_name
        for name in tier.sums:
            value = r[name]
            r[name] = float(value) if isinstance(value, float) else int(value)
        for name in tier.maxes:
            value = r[name]
            r[name] = None if value is None or pd.isna(value) else float(value)
    return records


def _rebuild(conn: Connection, tier: _Tier, zone: ZoneInfo, days: Sequence[date]) -> None:
    """Replace the daily rows of ``days`` (consecutive) in ``zone`` with sums of their hourly rows."""
    if not days:
        return
    start, _ = day_hours(zone, days[0])
    _, end = day_hours(zone, days[-1])
    d = tier.daily
    where = [d.c.zone == str(zone), d.c.day >= days[0], d.c.day <= days[-1]]
    if tier.scope is not None:
        where.append(tier.scope(d))
    conn.execute(delete(d).where(*where))
    rows = _daily_rows(_read_hours(conn, tier, start, end), tier, zone)
    if rows:
        conn.execute(insert(d), rows)


def recompute_days(conn: Connection, dataset: Dataset, zones: Iterable[str], start: datetime, end: datetime) -> None:
    """Rebuild, in ``conn``'s transaction, every day of every zone that holds an hour of [start, end).

    Called after the hourly rollups of ``dataset`` for those hours were recomputed in the same transaction.
    """
    for name in zones:
        zone = ZoneInfo(name)
        days = days_touched(zone, start, end)
        for tier in _TIERS[dataset]:
            _rebuild(conn, tier, zone, days)


def kept_zones(conn: Connection) -> list[str]:
    """The zones whose daily rollups are kept (see the module docstring), in name order."""
    t = _t(RollupZoneRow)
    return sorted(z for (z,) in conn.execute(select(t.c.zone)))


def _hour_span(conn: Connection) -> tuple[datetime, datetime] | None:
    firsts, lasts = [], []
    for tier in (_PROBE, _USAGE):
        lo, hi = conn.execute(select(func.min(tier.hourly.c.hour), func.max(tier.hourly.c.hour))).one()
        if lo is not None:
            firsts.append(lo)
            lasts.append(hi)
    if not firsts:
        return None
    return min(firsts), max(lasts) + _HOUR


def keep_zones(conn: Connection, zones: Iterable[str], now: datetime) -> list[str]:
    """List each of ``zones`` not yet kept, after building all its days from the hourly rollups; return all kept.

    Must run under the rollup refresh lock, in a write transaction (``monitor.rollup`` does both). An unknown
    zone name raises ``ZoneInfoNotFoundError`` before anything is written.
    """
    wanted = [str(ZoneInfo(z)) for z in dict.fromkeys(zones)]
    kept = kept_zones(conn)
    new = [z for z in wanted if z not in kept]
    if not new:
        return kept
    span = _hour_span(conn)
    for name in new:
        zone = ZoneInfo(name)
        if span is not None:
            days = days_touched(zone, span[0], span[1])
            for i in range(0, len(days), _DAYS_PER_BATCH):
                batch = days[i : i + _DAYS_PER_BATCH]
                for tiers in _TIERS.values():
                    for tier in tiers:
                        _rebuild(conn, tier, zone, batch)
        conn.execute(insert(_t(RollupZoneRow)), {"zone": name, "added_at": now})
    return sorted([*kept, *new])
