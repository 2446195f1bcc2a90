"""Throttling over time: the 429 rate, throttled share and outcome / provider-code breakdown.

Probes and real traffic are kept apart (``traffic``): probe figures come from ``rollup_probe_hourly`` and the
``probe`` rows of ``rollup_outcome_hourly`` (both built from ``probe_results``); real-traffic figures from the
``transport`` / ``proxy`` rows of ``rollup_usage_hourly`` and ``rollup_outcome_hourly``. Everything is summed in
SQL per period (whole local days from the daily rollups, see ``monitor.analytics._days``), so the cost depends
on the rolled-up rows read, not on raw row counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, cast
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from sqlalchemy import Table

from monitor.analytics._base import DEFAULT_ZONE, Db, Filters, Granularity, connect, empty, ratio, zone_of
from monitor.analytics._days import grouped
from monitor.models import (
    OutcomeDailyRow,
    OutcomeHourlyRow,
    ProbeDailyRow,
    ProbeHourlyRow,
    UsageDailyRow,
    UsageHourlyRow,
)

__all__ = ["REAL_SOURCES", "Traffic", "outcome_breakdown", "throttle_rates"]

Traffic = Literal["probe", "real"]
REAL_SOURCES = ("transport", "proxy")
_PROBE_DIMS = ("provider", "model", "vantage")
_REAL_DIMS = ("provider", "model", "vantage", "app")
_RATE_TAIL = (
    "source",
    "requests",
    "ok",
    "throttled",
    "http_429",
    "rate_429",
    "throttled_rate",
    "retry_after_mean_s",
    "retry_after_max_s",
)
_BREAKDOWN_TAIL = ("source", "outcome", "error_code", "requests", "http_429", "share")


def _check_by(by: Sequence[str], traffic: Traffic) -> list[str]:
    allowed = _PROBE_DIMS if traffic == "probe" else _REAL_DIMS
    bad = [d for d in by if d not in allowed]
    if bad:
        raise ValueError(f"cannot group {traffic} traffic by {', '.join(bad)}; choose from {', '.join(allowed)}")
    return list(by)


def _real_sources(filters: Filters) -> tuple[str, ...]:
    return tuple(s for s in REAL_SOURCES if not filters.sources or s in filters.sources)


def throttle_rates(
    db: Db,
    filters: Filters,
    *,
    traffic: Traffic = "probe",
    granularity: Granularity | None = "hour",
    zone: str | ZoneInfo = DEFAULT_ZONE,
    by: Sequence[str] = ("provider", "model"),
) -> pd.DataFrame:
    """Requests, HTTP 429s and throttled outcomes per period, ``by`` dimensions and source.

    Columns: ``period`` (tz-aware start of the hour / local day in ``zone``; absent when ``granularity`` is None),
    ``by``, then ``source``, ``requests``, ``ok``, ``throttled`` (rate_limited + concurrency_limited +
    overloaded), ``http_429``, ``rate_429`` = http_429 / requests, ``throttled_rate``, and for probes the mean and
    max ``Retry-After`` seen (seconds; NaN for real traffic, whose rollups do not keep it). ``by`` takes provider,
    model, vantage (and app for real traffic).
    """
    dims = _check_by(by, traffic)
    head = ([] if granularity is None else ["period"]) + dims
    columns = [*head, *_RATE_TAIL]
    tz = zone_of(zone)
    sums = ["requests", "ok", "throttled", "http_429"]
    with connect(db) as conn:
        if traffic == "probe":
            frame = grouped(
                conn,
                cast(Table, ProbeHourlyRow.__table__),
                filters,
                daily=cast(Table, ProbeDailyRow.__table__),
                granularity=granularity,
                zone=tz,
                dims=dims,
                sums=[*sums, "retry_after_count", "retry_after_sum_s"],
                maxes=["retry_after_max_s"],
            )
            if not frame.empty:
                frame["source"] = "probe"
        else:
            sources = _real_sources(filters)
            if not sources:
                return empty(columns)
            frame = grouped(
                conn,
                cast(Table, UsageHourlyRow.__table__),
                filters,
                daily=cast(Table, UsageDailyRow.__table__),
                granularity=granularity,
                zone=tz,
                dims=[*dims, "source"],
                sums=sums,
                only={"source": sources},
                apps=True,
            )
    if frame.empty:
        return empty(columns)
    frame["rate_429"] = ratio(frame["http_429"], frame["requests"])
    frame["throttled_rate"] = ratio(frame["throttled"], frame["requests"])
    if traffic == "probe":
        frame["retry_after_mean_s"] = ratio(frame["retry_after_sum_s"], frame["retry_after_count"])
        frame["retry_after_max_s"] = pd.to_numeric(frame["retry_after_max_s"]).astype("float64")
    else:
        frame["retry_after_mean_s"] = np.nan
        frame["retry_after_max_s"] = np.nan
    frame = frame.sort_values([*head, "source"], kind="stable")
    return frame[columns].reset_index(drop=True)


def outcome_breakdown(
    db: Db,
    filters: Filters,
    *,
    traffic: Traffic = "probe",
    granularity: Granularity | None = "hour",
    zone: str | ZoneInfo = DEFAULT_ZONE,
    by: Sequence[str] = ("provider", "model"),
) -> pd.DataFrame:
    """Requests per outcome and provider code, per period, ``by`` dimensions and source.

    Columns: ``period`` (absent when ``granularity`` is None), ``by``, ``source``, ``outcome``, ``error_code``
    (``""`` when the provider gave none), ``requests``, ``http_429`` (how many of them came with HTTP 429) and
    ``share`` = requests / all requests of that period, ``by`` group and source. The 429 rate broken down by
    code is ``http_429`` over the group's requests.
    """
    dims = _check_by(by, traffic)
    head = ([] if granularity is None else ["period"]) + dims
    columns = [*head, *_BREAKDOWN_TAIL]
    if traffic == "probe":
        sources: tuple[str, ...] = ("probe",)
    else:
        sources = _real_sources(filters)
        if not sources:
            return empty(columns)
    with connect(db) as conn:
        frame = grouped(
            conn,
            cast(Table, OutcomeHourlyRow.__table__),
            filters,
            daily=cast(Table, OutcomeDailyRow.__table__),
            granularity=granularity,
            zone=zone_of(zone),
            dims=[*dims, "source", "outcome", "error_code"],
            sums=["requests", "http_429"],
            only={"source": sources},
            apps=traffic == "real",
        )
    if frame.empty:
        return empty(columns)
    group = [*head, "source"]
    totals = frame.groupby(group, sort=False)["requests"].transform("sum")
    frame["share"] = ratio(frame["requests"], totals)
    frame = frame.sort_values(
        [*group, "requests", "outcome", "error_code"], ascending=[True] * len(group) + [False, True, True]
    )
    return frame[columns].reset_index(drop=True)
