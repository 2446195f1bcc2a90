"""Latency from the probe rollups: percentiles over time, the hour-of-day profile, and the peak-hour slowdown.

All three merge the hourly histograms of ``rollup_probe_hourly`` (see ``monitor.analytics._hist``), so their
percentiles are within one bucket width (2.33%) of the exact ones, and their cost grows with the number of
rolled-up hours read, never with the number of raw probes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, cast
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from sqlalchemy import Connection, Table, select

from monitor.analytics._base import (
    DEFAULT_ZONE,
    Db,
    Filters,
    Granularity,
    conditions,
    connect,
    empty,
    period_series,
    read_frame,
    time_column,
    zone_of,
)
from monitor.analytics._days import day_conditions, split_days
from monitor.analytics._hist import METRIC_COLUMNS, METRICS, FloatArray, Metric, summarize
from monitor.models import ProbeDailyRow, ProbeHourlyRow

__all__ = [
    "LATENCY_COLUMNS",
    "PEAK_COLUMNS",
    "PEAK_SPAN",
    "PROFILE_COLUMNS",
    "PROFILE_SPAN",
    "PeakWindow",
    "latency_percentiles",
    "latency_profile",
    "load_probe_hours",
    "peak_slowdown",
]

PROFILE_SPAN = timedelta(days=28)
"""How much of a range the dashboard reads for the weekday x hour profile: four whole weeks give every cell four
hours of probes, recent enough to show today's busy hours (providers add capacity; months blur them), and the
profile needs hourly rows, so a longer span would cost time in proportion."""
PEAK_SPAN = timedelta(days=7)
"""The peak-slowdown window of the issue: the last 7 days (``peak_slowdown``'s default and the dashboard's)."""

_TARGET_DIMS = ("provider", "model", "vantage")
LATENCY_COLUMNS = ("period", "provider", "model", "vantage", "metric", "samples", "mean", "p50", "p95", "p99")
PROFILE_COLUMNS = ("provider", "model", "weekday", "hour", "samples", "mean", "p50", "p95", "p99")
PEAK_COLUMNS = (
    "provider",
    "model",
    "metric",
    "peak_median",
    "offpeak_median",
    "ratio",
    "peak_samples",
    "offpeak_samples",
    "window",
)


def load_probe_hours(
    conn: Connection,
    filters: Filters,
    metrics: Sequence[Metric],
    *extra: str,
    days: ZoneInfo | Literal["any"] | None = None,
) -> pd.DataFrame:
    """The probe rollup rows selected by ``filters``: ``hour``, keys, ``extra`` columns and each metric's columns.

    With ``days`` (a zone, or ``"any"`` when only totals over the range matter) the whole local days of the
    range come from ``rollup_probe_daily``, one row per day with ``hour`` set to the day's first UTC hour, and
    only the partial days from ``rollup_probe_hourly`` (see ``monitor.analytics._days``): the same sums and
    merged histograms per local day, from far fewer rows. ``extra`` columns must then exist in both tables.
    """
    hourly = cast(Table, ProbeHourlyRow.__table__)
    names = ["hour", "provider", "model", "vantage", *extra]
    for metric in metrics:
        names += METRIC_COLUMNS[metric]
    times = [n for n in ("hour", "last_ts") if n in names]

    def read_hours(part: Filters) -> pd.DataFrame:
        columns = [time_column(conn, hourly.c[n]) if n in times else hourly.c[n] for n in names]
        return read_frame(conn, select(*columns).where(*conditions(hourly, part)), names, times)

    if days is None:
        return read_hours(filters)
    split = split_days(conn, filters, None if days == "any" else days)
    parts = [read_hours(part) for part in split.hours]
    if split.zone is not None:
        daily = cast(Table, ProbeDailyRow.__table__)
        day_names = ["day", *names[1:]]
        stmt = select(*(daily.c[n] for n in day_names)).where(*day_conditions(daily, filters, split))
        frame = read_frame(conn, stmt, day_names, dates=["day"])
        if not frame.empty:
            frame.insert(0, "hour", split.first_hours(frame.pop("day")))
            parts.append(frame)
    parts = [p for p in parts if not p.empty]
    if not parts:
        return empty(names)
    return parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)


def latency_percentiles(
    db: Db,
    filters: Filters,
    *,
    granularity: Granularity = "hour",
    zone: str | ZoneInfo = DEFAULT_ZONE,
    metrics: Sequence[Metric] = METRICS,
    by: Sequence[str] = ("provider", "model", "vantage"),
) -> pd.DataFrame:
    """Probe latency per period (hour or local day in ``zone``) and target: one row per metric.

    Columns ``LATENCY_COLUMNS``: ``period`` is the tz-aware start of the hour / local day, ``metric`` one of
    ``ttft_ms``, ``total_ms``, ``tokens_per_s``, ``samples`` the values behind the figures (timed successful
    probes), ``mean`` exact, ``p50``/``p95``/``p99`` from the histograms. Dimensions left out of ``by`` are
    merged (and filled with ``"*"``). Rows sorted by period, then target, then metric.
    """
    bad = [d for d in by if d not in _TARGET_DIMS]
    if bad:
        raise ValueError(f"cannot group latency by {', '.join(bad)}; choose from {', '.join(_TARGET_DIMS)}")
    tz = zone_of(zone)
    with connect(db) as conn:
        frame = load_probe_hours(conn, filters, metrics, days=tz if granularity == "day" else None)
    if frame.empty:
        return empty(LATENCY_COLUMNS)
    frame["period"] = period_series(frame["hour"], granularity, tz)
    keys = ["period", *by]
    parts = []
    for metric in metrics:
        part = summarize(frame, keys, metric)
        part = part[part["samples"] > 0]
        part.insert(len(keys), "metric", metric)
        parts.append(part)
    out = pd.concat(parts, ignore_index=True)
    for name in ("provider", "model", "vantage"):
        if name not in out:
            out[name] = "*"
    out = out.sort_values(["period", "provider", "model", "vantage", "metric"], kind="stable")
    return out[list(LATENCY_COLUMNS)].reset_index(drop=True)


def latency_profile(
    db: Db, filters: Filters, *, zone: str | ZoneInfo = "Asia/Shanghai", metric: Metric = "ttft_ms"
) -> pd.DataFrame:
    """``metric`` by local weekday and hour of day in ``zone``, per provider and model (vantages merged).

    Columns ``PROFILE_COLUMNS``; ``weekday`` 0 is Monday, ``hour`` 0-23 is the local hour the values were taken
    in. Use Asia/Shanghai to see the providers' peak hours, the user's zone to read them in local time. Hours
    align exactly with whole-hour zones; in a half-hour zone each UTC hour counts in the local hour it starts in.
    """
    tz = zone_of(zone)
    with connect(db) as conn:
        frame = load_probe_hours(conn, filters, [metric])
    if frame.empty:
        return empty(PROFILE_COLUMNS)
    local = frame["hour"].dt.tz_convert(tz)
    frame["weekday"] = local.dt.day_of_week
    frame["hour"] = local.dt.hour
    out = summarize(frame, ["provider", "model", "weekday", "hour"], metric)
    out = out[out["samples"] > 0]
    return out[list(PROFILE_COLUMNS)].reset_index(drop=True)


@dataclass(frozen=True, slots=True)
class PeakWindow:
    """Local hours ``[start_hour, end_hour)`` in ``zone`` that count as the providers' peak (may wrap midnight)."""

    start_hour: int = 15
    end_hour: int = 18
    zone: str = "Asia/Shanghai"

    def __post_init__(self) -> None:
        if not (0 <= self.start_hour <= 23 and 1 <= self.end_hour <= 24 and self.start_hour != self.end_hour):
            raise ValueError(f"peak window {self.start_hour}-{self.end_hour}: expected hours 0-24, start != end")
        zone_of(self.zone)

    def contains(self, hours: pd.Series) -> pd.Series:
        """Whether each local hour of day (0-23) is in the window."""
        if self.start_hour < self.end_hour:
            return (hours >= self.start_hour) & (hours < self.end_hour)
        return (hours >= self.start_hour) | (hours < self.end_hour)

    def describe(self) -> str:
        """E.g. ``15:00-18:00 Asia/Shanghai``."""
        return f"{self.start_hour:02d}:00-{self.end_hour:02d}:00 {self.zone}"


def peak_slowdown(
    db: Db,
    filters: Filters | None = None,
    *,
    window: PeakWindow | None = None,
    metric: Metric = "ttft_ms",
    now: datetime | None = None,
    days: int = 7,
) -> pd.DataFrame:
    """How much slower each provider and model is in the peak window: median in peak / median off peak.

    Reads ``filters`` (default: the last ``days`` days before ``now``, every target), vantages merged. Columns
    ``PEAK_COLUMNS``: the two medians of ``metric`` (from the histograms), ``ratio`` (NaN when either side has no
    samples; for ``tokens_per_s`` a ratio below 1 means slower), the sample counts behind each median, and the
    window used. One row per provider and model with any samples.
    """
    window = window or PeakWindow()
    if filters is None:
        filters = Filters.last(timedelta(days=days), now=now or datetime.now(UTC))
    # Reads hourly rows (peak hours are hours): pass ``filters.tail(PEAK_SPAN)`` for the 7-day ratio.
    tz = zone_of(window.zone)
    with connect(db) as conn:
        frame = load_probe_hours(conn, filters, [metric])
    if frame.empty:
        return empty(PEAK_COLUMNS)
    frame["peak"] = window.contains(frame["hour"].dt.tz_convert(tz).dt.hour)
    stats = summarize(frame, ["provider", "model", "peak"], metric, qs=(0.5,))
    stats = stats[stats["samples"] > 0]
    if stats.empty:
        return empty(PEAK_COLUMNS)
    wide = stats.pivot_table(index=["provider", "model"], columns="peak", values=["p50", "samples"], aggfunc="first")
    out = pd.DataFrame(index=wide.index).reset_index()
    peak_p50 = _side(wide, "p50", True)
    off_p50 = _side(wide, "p50", False)
    out["metric"] = metric
    out["peak_median"] = peak_p50
    out["offpeak_median"] = off_p50
    with np.errstate(invalid="ignore", divide="ignore"):
        out["ratio"] = peak_p50 / off_p50
    out["peak_samples"] = np.nan_to_num(_side(wide, "samples", True)).astype("int64")
    out["offpeak_samples"] = np.nan_to_num(_side(wide, "samples", False)).astype("int64")
    out["window"] = window.describe()
    return out[list(PEAK_COLUMNS)].reset_index(drop=True)


def _side(wide: pd.DataFrame, value: str, peak: bool) -> FloatArray:
    if (value, peak) in wide.columns:
        return np.asarray(wide[(value, peak)], dtype=np.float64)
    return np.full(len(wide), np.nan)
