"""Everything the pages read, through ``monitor.analytics`` and ``monitor.quota``, cached for ``TTL_S`` seconds.

Each function takes the database URL (the engine is shared per URL) and plain, hashable arguments, so
``st.cache_data`` keys on them; the pages pass ranges that end at the next whole hour, so the key stays the same
for a whole hour and the TTL alone decides when figures are read again. ``status`` tells an empty, missing or
unreachable database apart before any page asks for figures.

Pages read in the order they draw, each figure just before its section: the browser draws what is sent while the
next read runs. (Starting a page's reads together in threads was slower on a cold page: the reads contend for the
GIL, so every section waited for all of them — bench/dashboard.py, BENCHMARKS.md.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import pandas as pd
import streamlit as st
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from monitor import analytics
from monitor.analytics import Filters, Granularity, Metric, PeakWindow
from monitor.config import Settings
from monitor.errors import StoreError
from monitor.pricing import PriceCatalog
from monitor.quota import QuotaStatus, quota_statuses
from monitor.redact import redact
from monitor.store import describe_url, make_engine, normalise_url, table_names

TTL_S = 45
ROLLUP_TABLES = ("rollup_probe_hourly", "rollup_usage_hourly", "rollup_outcome_hourly")
PROBE_LIMIT = analytics.PROBE_LIMIT


@st.cache_resource(show_spinner=False)
def engine(url: str) -> Engine:
    """One engine per database URL for the whole server (connections are pooled)."""
    return make_engine(url)


@st.cache_resource(show_spinner=False)
def catalog(prices_json: str) -> PriceCatalog:
    """The price catalog with the config's overrides and accounting zone (``prices_json``: from ``prices_json``)."""
    return Settings.model_validate_json(prices_json).price_catalog()


def prices_json(settings: Settings) -> str:
    """The config's price overrides and display zone as JSON: the cache key of ``catalog``."""
    rules = ",".join(rule.model_dump_json() for rule in settings.prices)
    return f'{{"timezone": {json.dumps(settings.timezone)}, "prices": [{rules}]}}'


@dataclass(frozen=True, slots=True)
class DbStatus:
    """What the database holds: ``ok`` (rolled-up figures), ``empty``, ``missing`` (no file) or ``error``."""

    kind: Literal["ok", "empty", "missing", "error"]
    url: str  # password hidden
    detail: str = ""


def error_text(exc: BaseException, url: str) -> str:
    """The first line of an error, without the URL's password or any API key."""
    text = f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    try:
        password = make_url(normalise_url(url)).password
    except (ArgumentError, StoreError):
        password = None
    if password:
        text = text.replace(str(password), "***")
    return redact(text)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def status(url: str) -> DbStatus:
    """Whether the database at ``url`` can be read and holds any rolled-up figures; never raises."""
    shown = describe_url(url)
    try:
        parsed = make_url(normalise_url(url))
        on_disk = parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")
        if on_disk and not Path(str(parsed.database)).is_file():
            return DbStatus("missing", shown)  # opening it would create an empty file
        db = engine(url)
        if not set(ROLLUP_TABLES) <= table_names(db):
            return DbStatus("empty", shown, "not migrated")
        dims = dimensions(url)
    except (SQLAlchemyError, StoreError, OSError, ValueError) as exc:
        return DbStatus("error", shown, error_text(exc, url))
    if not (dims.providers or dims.apps):
        return DbStatus("empty", shown)
    return DbStatus("ok", shown)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def dimensions(url: str) -> analytics.Dimensions:
    """``analytics.dimensions``: providers, models, vantages and apps ever rolled up, for the filter lists."""
    return analytics.dimensions(engine(url))


@st.cache_data(ttl=TTL_S, show_spinner=False)
def health(url: str, now: datetime, filters: Filters) -> list[analytics.TargetHealth]:
    """``analytics.health`` at ``now`` for the selected providers, models and vantages."""
    return analytics.health(engine(url), now=now, filters=filters)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def spend_forecast(url: str, now: datetime, filters: Filters, currency: str, zone: str) -> analytics.SpendForecast:
    """``analytics.spend_forecast`` in ``currency`` (the month of ``now`` in ``zone``)."""
    return analytics.spend_forecast(engine(url), filters, now=now, zone=zone, currency=currency)  # type: ignore[arg-type]


@st.cache_data(ttl=TTL_S, show_spinner=False)
def quotas(url: str, settings_json: str, now: datetime) -> list[QuotaStatus]:
    """``monitor.quota.quota_statuses`` for the plans of the settings (given as JSON, the cache key)."""
    settings = Settings.model_validate_json(settings_json)
    return quota_statuses(engine(url), settings, now=now)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def latency(url: str, filters: Filters, granularity: Granularity, zone: str, metric: Metric) -> pd.DataFrame:
    """``analytics.latency_percentiles`` of ``metric`` per period and target (one metric: a third of the work)."""
    return analytics.latency_percentiles(engine(url), filters, granularity=granularity, zone=zone, metrics=(metric,))


@st.cache_data(ttl=TTL_S, show_spinner=False)
def profile(url: str, filters: Filters, zone: str, metric: Metric) -> pd.DataFrame:
    """``analytics.latency_profile`` over the last ``PROFILE_SPAN`` of the range: ``metric`` by weekday and hour."""
    return analytics.latency_profile(engine(url), filters.tail(analytics.PROFILE_SPAN), zone=zone, metric=metric)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def peak(url: str, filters: Filters, metric: Metric) -> pd.DataFrame:
    """``analytics.peak_slowdown`` over the last ``PEAK_SPAN`` (7 days) of the range, window 15:00-18:00 CST."""
    return analytics.peak_slowdown(engine(url), filters.tail(analytics.PEAK_SPAN), window=PeakWindow(), metric=metric)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def compare(url: str, filters: Filters, prices: str) -> pd.DataFrame:
    """``analytics.compare_providers`` with the config's price overrides."""
    return analytics.compare_providers(engine(url), filters, catalog=catalog(prices))


@st.cache_data(ttl=TTL_S, show_spinner=False)
def throttle(
    url: str,
    filters: Filters,
    traffic: analytics.Traffic,
    granularity: Granularity | None,
    by: tuple[str, ...],
    zone: str,
) -> pd.DataFrame:
    """``analytics.throttle_rates`` for probes or real traffic."""
    return analytics.throttle_rates(engine(url), filters, traffic=traffic, granularity=granularity, zone=zone, by=by)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def breakdown(url: str, filters: Filters, traffic: analytics.Traffic, zone: str) -> pd.DataFrame:
    """``analytics.outcome_breakdown`` over the whole range, per provider and model."""
    return analytics.outcome_breakdown(engine(url), filters, traffic=traffic, granularity=None, zone=zone)


@st.cache_data(ttl=TTL_S, show_spinner=False)
def costs(
    url: str, filters: Filters, period: analytics.CostPeriod, by: tuple[str, ...], zone: str, prices: str
) -> pd.DataFrame:
    """``analytics.costs`` per ``period`` and ``by`` with the config's price overrides (for cache savings)."""
    return analytics.costs(engine(url), filters, period=period, by=by, zone=zone, catalog=catalog(prices))  # type: ignore[arg-type]


@st.cache_data(ttl=TTL_S, show_spinner=False)
def latest_probes(url: str, filters: Filters, outcomes: tuple[str, ...] = (), limit: int = PROBE_LIMIT) -> pd.DataFrame:
    """``analytics.latest_probes``: the newest ``limit`` probe results in the range, optionally of some outcomes."""
    return analytics.latest_probes(engine(url), filters, outcomes=outcomes, limit=limit)


def clear() -> None:
    """Forget every cached figure (the Refresh button)."""
    st.cache_data.clear()
