"""The health of each provider and model right now, from the last hour of probe rollups.

Status, decided in this order from the probes in the window (all vantages selected):

- ``down``: fewer than half of the probes succeeded (``DOWN_BELOW_SUCCESS``) and failures other than throttling
  (errors, timeouts, auth or quota failures...) are at least as many as throttled ones: the provider is not
  serving.
- ``throttled``: at least ``THROTTLED_SHARE`` (10%) of the probes were throttled (rate_limited,
  concurrency_limited, overloaded) or answered HTTP 429, or the latest probe was throttled.
- ``healthy``: otherwise.

The window is the current UTC hour and the one before it (rollups are hourly), so it holds between 60 and
120 minutes of probes. A target with no probe in the window is not listed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import pandas as pd

from monitor.analytics._base import Db, Filters, connect
from monitor.analytics._hist import summarize
from monitor.analytics.latency import load_probe_hours
from monitor.outcomes import THROTTLED
from monitor.rollup import floor_hour

__all__ = ["DOWN_BELOW_SUCCESS", "THROTTLED_SHARE", "HealthStatus", "TargetHealth", "health"]

HealthStatus = Literal["healthy", "throttled", "down"]
DOWN_BELOW_SUCCESS = 0.5
THROTTLED_SHARE = 0.10
_THROTTLED = {str(o) for o in THROTTLED}


@dataclass(frozen=True, slots=True)
class TargetHealth:
    """One provider and model over the health window: status, why, and the figures behind it."""

    provider: str
    model: str
    status: HealthStatus
    reason: str
    requests: int
    ok: int
    throttled: int
    failed: int
    http_429: int
    rate_429: float
    median_ttft_ms: float | None
    last_outcome: str
    last_error_code: str | None
    last_ts: datetime
    since: datetime


def _status(n: int, ok: int, throttled: int, failed: int, http_429: int, last: str) -> tuple[HealthStatus, str]:
    if ok / n < DOWN_BELOW_SUCCESS and failed >= throttled:
        return "down", f"{ok} of {n} probes succeeded; {failed} failed, last: {last}"
    if throttled / n >= THROTTLED_SHARE or http_429 / n >= THROTTLED_SHARE or last in _THROTTLED:
        return "throttled", f"{throttled} of {n} probes throttled, {http_429} HTTP 429, last: {last}"
    return "healthy", f"{ok} of {n} probes succeeded, last: {last}"


def health(db: Db, *, now: datetime | None = None, filters: Filters | None = None) -> list[TargetHealth]:
    """Health per provider and model over the last hour (see the module docstring), sorted by provider, model.

    ``filters`` only selects providers, models and vantages; its time range is ignored. An empty list means
    no probe in the window.
    """
    at = now or datetime.now(UTC)
    since = floor_hour(at) - timedelta(hours=1)
    window = Filters(since, floor_hour(at) + timedelta(hours=1))
    if filters is not None:
        window = filters.with_range(window.start, window.end)
    with connect(db) as conn:
        frame = load_probe_hours(
            conn,
            window,
            ["ttft_ms"],
            "requests",
            "ok",
            "throttled",
            "http_429",
            "last_ts",
            "last_outcome",
            "last_error_code",
        )
    if frame.empty:
        return []
    keys = ["provider", "model"]
    stats = summarize(frame, keys, "ttft_ms", qs=(0.5,))
    sums = frame.groupby(keys, sort=True)[["requests", "ok", "throttled", "http_429"]].sum().reset_index()
    latest = frame.sort_values("last_ts", kind="stable").drop_duplicates(keys, keep="last")
    table = sums.merge(stats[[*keys, "p50"]], on=keys).merge(
        latest[[*keys, "last_ts", "last_outcome", "last_error_code"]], on=keys
    )
    out: list[TargetHealth] = []
    for row in table.to_dict("records"):
        n, ok, throttled, http_429 = (int(row[c]) for c in ("requests", "ok", "throttled", "http_429"))
        failed = n - ok - throttled
        last = str(row["last_outcome"])
        status, reason = _status(n, ok, throttled, failed, http_429, last)
        code = row["last_error_code"]
        out.append(
            TargetHealth(
                provider=str(row["provider"]),
                model=str(row["model"]),
                status=status,
                reason=reason,
                requests=n,
                ok=ok,
                throttled=throttled,
                failed=failed,
                http_429=http_429,
                rate_429=http_429 / n,
                median_ttft_ms=None if pd.isna(row["p50"]) else float(row["p50"]),
                last_outcome=last,
                last_error_code=None if code is None or pd.isna(code) else str(code),
                last_ts=pd.Timestamp(row["last_ts"]).to_pydatetime(),
                since=since,
            )
        )
    return out
