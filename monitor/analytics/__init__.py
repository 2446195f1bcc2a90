"""Every number the dashboard, alert emails and monthly exports show, read from the rollups only.

Plain functions over an engine, connection or session and a :class:`Filters` (time range and selections).
They read the hourly and daily rollups (kept by ``monitor.rollup`` and ``monitor.rollup_days``) plus
``fx_rates``, never the raw tables (except ``latest_probes``, one indexed query with a LIMIT), so every consumer
agrees on every number and no function's cost grows with the raw row count. On an empty database each returns
an empty frame with its columns (or a result saying there is no data); none raises.

- latency: :func:`latency_percentiles`, :func:`latency_profile`, :func:`peak_slowdown` (:class:`PeakWindow`)
- throttling: :func:`throttle_rates`, :func:`outcome_breakdown` (probes and real traffic apart)
- side by side: :func:`compare_providers`
- spend: :func:`costs`, :func:`spend_forecast`
- the filter lists: :func:`dimensions`
- now: :func:`health`; the latest single probes: :func:`latest_probes` (the one raw-table read, with a LIMIT)

Time zones: rollups are UTC hours. Periods are shown in a zone (default ``Asia/Tokyo``); they align exactly with
whole-hour zones. In a half-hour zone each UTC hour counts in the local hour / day in which it starts.
"""

from __future__ import annotations

from monitor.analytics._base import DEFAULT_ZONE, Db, Filters, Granularity
from monitor.analytics._hist import METRICS, Metric
from monitor.analytics.compare import COMPARE_COLUMNS, compare_providers, model_family
from monitor.analytics.costs import (
    FORECAST_METHOD,
    CostDim,
    CostPeriod,
    SpendForecast,
    cost_columns,
    costs,
    load_rate_book,
    spend_forecast,
)
from monitor.analytics.dimensions import Dimensions, dimensions
from monitor.analytics.health import DOWN_BELOW_SUCCESS, THROTTLED_SHARE, HealthStatus, TargetHealth, health
from monitor.analytics.latency import (
    LATENCY_COLUMNS,
    PEAK_COLUMNS,
    PEAK_SPAN,
    PROFILE_COLUMNS,
    PROFILE_SPAN,
    PeakWindow,
    latency_percentiles,
    latency_profile,
    peak_slowdown,
)
from monitor.analytics.probes import PROBE_COLUMNS, PROBE_LIMIT, latest_probes
from monitor.analytics.traffic import REAL_SOURCES, Traffic, outcome_breakdown, throttle_rates

__all__ = [
    "COMPARE_COLUMNS",
    "DEFAULT_ZONE",
    "DOWN_BELOW_SUCCESS",
    "FORECAST_METHOD",
    "LATENCY_COLUMNS",
    "METRICS",
    "PEAK_COLUMNS",
    "PEAK_SPAN",
    "PROBE_COLUMNS",
    "PROBE_LIMIT",
    "PROFILE_COLUMNS",
    "PROFILE_SPAN",
    "REAL_SOURCES",
    "THROTTLED_SHARE",
    "CostDim",
    "CostPeriod",
    "Db",
    "Dimensions",
    "Filters",
    "Granularity",
    "HealthStatus",
    "Metric",
    "PeakWindow",
    "SpendForecast",
    "TargetHealth",
    "Traffic",
    "compare_providers",
    "cost_columns",
    "costs",
    "dimensions",
    "health",
    "latency_percentiles",
    "latency_profile",
    "latest_probes",
    "load_rate_book",
    "model_family",
    "outcome_breakdown",
    "peak_slowdown",
    "spend_forecast",
    "throttle_rates",
]
