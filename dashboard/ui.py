"""What every page shares: the settings, the reader's selections (``View``), the sidebar, charts and notices.

``app.py`` builds the ``View`` once per run (settings, database URL, "now", display zone, language and the
``Filters`` of the sidebar) and the page reads it with ``view()``. Selections live in ``st.session_state`` under
the keys of ``KEPT``, so they survive a change of page even where the widget is not drawn.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import altair as alt
import pandas as pd
import streamlit as st
from monitor.dashboard import data
from monitor.dashboard import format as fmt
from monitor.dashboard.i18n import has, t

from monitor.analytics import Filters, Granularity, TargetHealth
from monitor.config import Settings, load_settings
from monitor.dashboard_cmd import AS_OF_ENV, settings_from_environ
from monitor.errors import ConfigError
from monitor.rollup import floor_hour
from monitor.store import describe_url

RANGES: dict[str, timedelta] = {
    "6h": timedelta(hours=6),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
    "90d": timedelta(days=90),
}
CUSTOM = "custom"
DEFAULT_RANGE = "7d"
PEAK_ZONE = "Asia/Shanghai"
# Widget keys whose values must survive page changes (Streamlit forgets a widget's value when it is not drawn).
KEPT = (
    "lang",
    "f_range",
    "f_days",
    "f_providers",
    "f_models",
    "f_vantages",
    "f_apps",
    "currency",
    "cost_dim",
    "lat_metric",
    "lat_pct",
    "lat_gran",
    "heat_zone",
    "heat_target",
    "thr_gran",
    "thr_traffic",
    "lat_series",
    "thr_series_probe",
    "thr_series_real",
    "probe_outcomes",
    "probe_errors_only",
)


@dataclass(frozen=True, slots=True)
class View:
    """One run's context: settings, database, "now", display zone, language and the reader's selections."""

    settings: Settings
    settings_json: str
    url: str
    now: datetime
    zone: ZoneInfo
    lang: str
    filters: Filters
    range_key: str

    @property
    def zone_name(self) -> str:
        """The display zone's name (``Asia/Tokyo``): what the analytics functions take."""
        return self.zone.key

    @property
    def prices(self) -> str:
        """The cache key of the config's price overrides."""
        return data.prices_json(self.settings)

    @property
    def hours(self) -> float:
        """Length of the selected range in hours."""
        return (self.filters.end - self.filters.start).total_seconds() / 3600


def keep_state() -> None:
    """Detach kept selections from their widgets so they outlive a page where the widget is not drawn."""
    for key in KEPT:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


def load() -> Settings:
    """The launcher's settings, else the config file (``$GLM_MONITOR_CONFIG`` / ``./glm-monitor.toml``).

    A bad config stops the app with the error message instead of a traceback.
    """
    try:
        settings = settings_from_environ()
        return settings if settings is not None else load_settings()
    except ConfigError as exc:
        st.error(str(exc))
        st.stop()
        raise  # for type checkers: st.stop() never returns


def now() -> datetime:
    """The dashboard's "now": ``$GLM_MONITOR_DASHBOARD_AS_OF`` when set, else the clock, to the minute."""
    text = os.environ.get(AS_OF_ENV)
    at = datetime.fromisoformat(text) if text else datetime.now(UTC)
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).replace(second=0, microsecond=0)


def time_range(key: str, at: datetime, zone: ZoneInfo, days: Sequence[date] = ()) -> tuple[datetime, datetime]:
    """[start, end) of a range: presets are whole hours ending with the current hour; custom are local days."""
    if key == CUSTOM and days:
        first, last = days[0], days[-1]
        start = datetime.combine(first, clock(0), zone).astimezone(UTC)
        end = datetime.combine(last + timedelta(days=1), clock(0), zone).astimezone(UTC)
        return start, end
    end = floor_hour(at) + timedelta(hours=1)
    return end - RANGES.get(key, RANGES[DEFAULT_RANGE]), end


def _selected(key: str, options: Sequence[str]) -> None:
    # A kept selection may name something the database no longer has: a multiselect refuses unknown values.
    current = st.session_state.get(key) or []
    st.session_state[key] = [v for v in current if v in options]


def sidebar(settings: Settings, url: str, at: datetime) -> View:
    """Draw the filters in the sidebar and return this run's ``View``."""
    zone = ZoneInfo(settings.timezone)
    dims = data.dimensions(url)
    side = st.sidebar
    side.subheader(t("filters.title"))
    st.session_state.setdefault("f_range", DEFAULT_RANGE)
    # Labels are fixed now: format functions may be called outside this run (e.g. by AppTest).
    range_labels = {k: t(f"range.{k}") for k in [*RANGES, CUSTOM]}
    range_key = side.selectbox(
        t("filters.range"), list(range_labels), format_func=range_labels.__getitem__, key="f_range"
    )
    days: Sequence[date] = ()
    if range_key == CUSTOM:
        today = at.astimezone(zone).date()
        st.session_state.setdefault("f_days", (today - timedelta(days=6), today))
        picked = side.date_input(t("filters.days"), key="f_days", max_value=today)
        days = tuple(picked) if isinstance(picked, tuple | list) else (picked,) if picked else ()
    for key, options in (
        ("f_providers", dims.providers),
        ("f_models", dims.models),
        ("f_vantages", dims.vantages),
        ("f_apps", dims.apps),
    ):
        _selected(key, options)
    providers = side.multiselect(
        t("filters.providers"), dims.providers, key="f_providers", placeholder=t("filters.all")
    )
    models = side.multiselect(t("filters.models"), dims.models, key="f_models", placeholder=t("filters.all"))
    vantages = side.multiselect(t("filters.vantages"), dims.vantages, key="f_vantages", placeholder=t("filters.all"))
    apps = side.multiselect(t("filters.apps"), dims.apps, key="f_apps", placeholder=t("filters.all"))
    if side.button(t("filters.refresh"), icon=":material/refresh:"):
        data.clear()
    start, end = time_range(range_key, at, zone, days)
    filters = Filters(start, end, providers=providers, models=models, apps=apps, vantages=vantages)
    return View(
        settings=settings,
        settings_json=settings.model_dump_json(),
        url=settings.database.url,
        now=at,
        zone=zone,
        lang=str(st.session_state.get("lang", settings.language)),
        filters=filters,
        range_key=range_key,
    )


def view() -> View:
    """This run's ``View`` (set by ``app.py`` before the page runs)."""
    found = st.session_state.get("_view")
    if not isinstance(found, View):
        st.error(t("error.no_view"))
        st.stop()
    assert isinstance(found, View)
    return found


def header(v: View, title_key: str) -> None:
    """The page title and the range it shows."""
    st.title(t(title_key))
    st.caption(
        t(
            "common.range_caption",
            start=fmt.when(v.filters.start, v.zone),
            end=fmt.when(v.filters.end, v.zone),
            now=fmt.when(v.now, v.zone),
        )
    )


def footer(v: View) -> None:
    """The last element of every page: where the figures come from (the browser tests wait for it)."""
    started = st.session_state.get("_run_started")
    took = time.perf_counter() - started if isinstance(started, float) else 0.0
    with st.container(key="page-footer"):
        st.caption(t("common.footer", url=describe_url(v.url), ttl=data.TTL_S, seconds=f"{took:.2f}"))


def no_data(status: data.DbStatus) -> None:
    """The friendly page for a database with nothing to show yet."""
    with st.container(key="no-data"):
        st.title(t("empty.title"))
        st.info(t("empty.body"))
        st.markdown(t("empty.how"))
        st.code("glm-monitor demo --backfill 7d\nglm-monitor run", language="bash")
        detail = t("empty.missing", url=status.url) if status.kind == "missing" else t("empty.where", url=status.url)
        st.caption(detail)


def db_error(status: data.DbStatus) -> None:
    """A database that cannot be opened: its URL (password hidden) and the error."""
    with st.container(key="db-error"):
        st.title(t("dberror.title"))
        st.error(t("dberror.body", url=status.url, detail=status.detail))
        st.markdown(t("dberror.how"))


STATUS_COLORS = {"healthy": "green", "throttled": "orange", "down": "red"}
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>$~|])")


def md(text: str) -> str:
    """``text`` shown as it is inside Markdown: emphasis, links, HTML and LaTeX (``$``) characters escaped."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def status_badge(status: str) -> str:
    """A coloured badge in Markdown: healthy / throttled / down."""
    return f":{STATUS_COLORS.get(status, 'gray')}-badge[{md(t(f'status.{status}'))}]"


def health_tile(h: TargetHealth) -> str:
    """One provider/model's tile as one Markdown text: name, status badge,
    median TTFT and 429 rate of the last hour, and the counts behind them."""
    last = outcome(h.last_outcome) + (f" ({h.last_error_code})" if h.last_error_code else "")
    counts = t("overview.tile_caption", ok=h.ok, requests=h.requests, throttled=h.throttled, last=last)
    return "  \n".join(
        (
            f"**{md(h.provider)}** / {md(h.model)}",
            status_badge(h.status),
            f"{t('overview.median_ttft')} **{fmt.ms(h.median_ttft_ms)}** · "
            f"{t('overview.rate_429')} **{fmt.percent(h.rate_429)}**",
            f":small[:gray[{md(counts)}]]",
        )
    )


def css_key(*parts: str) -> str:
    """A widget / container key usable as a CSS class (``st-key-...``): ``tile-zai-glm-4-7``."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", "-".join(parts)).strip("-")


def outcome(name: str) -> str:
    """An outcome's name for the reader (the raw name when the catalog has no label for it)."""
    key = f"outcome.{name}"
    return t(key) if has(key) else name


def source(name: str) -> str:
    """Where a measurement came from (probe, proxy, transport) for the reader; the raw name if unknown."""
    key = f"source.{name}"
    return t(key) if has(key) else name


def target(provider: str, model: str, vantage: str | None = None) -> str:
    """``zai / glm-4.7`` (``@ vantage`` when given)."""
    base = f"{provider} / {model}" if model else provider
    return f"{base} @ {vantage}" if vantage else base


def local_times(values: pd.Series, zone: ZoneInfo) -> pd.Series:
    """Times as naive wall-clock times in ``zone``: charts use a UTC scale so they show exactly these."""
    return pd.to_datetime(values, utc=True).dt.tz_convert(zone).dt.tz_localize(None)


def granularity(v: View, choice: str) -> Granularity:
    """``hour`` or ``day``; ``auto`` picks hours for ranges up to two days."""
    if choice in ("hour", "day"):
        return choice  # type: ignore[return-value]
    return "hour" if v.hours <= 48 else "day"


def line_chart(
    frame: pd.DataFrame, *, y: str, y_title: str, series: str = "series", y_format: str = ",.0f", hourly: bool = True
) -> None:
    """A line per ``series`` over ``when`` (naive local times, see ``local_times``)."""
    axis_format = "%m-%d %H:%M" if hourly else "%Y-%m-%d"
    chart = (
        alt.Chart(frame)
        .mark_line(point=len(frame) <= 60)
        .encode(
            x=alt.X("when:T", title=None, scale=alt.Scale(type="utc"), axis=alt.Axis(format=axis_format)),
            y=alt.Y(f"{y}:Q", title=y_title, axis=alt.Axis(format=y_format)),
            color=alt.Color(f"{series}:N", title=None, legend=alt.Legend(orient="bottom", columns=4, labelLimit=320)),
            tooltip=[
                alt.Tooltip("when:T", title=t("common.time"), format=f"{axis_format}", formatType="utc"),
                alt.Tooltip(f"{series}:N", title=t("common.series")),
                alt.Tooltip(f"{y}:Q", title=y_title, format=y_format),
            ],
        )
        .properties(height=320)
    )
    st.altair_chart(chart, width="stretch")


TOP_N = 8
"""Series a chart draws by default: more lines make it unreadable and slow to draw (60 targets x vantages)."""


def ranked(values: pd.Series, *, highest_first: bool = True) -> list[str]:
    """The index of ``values`` (one figure per series) ordered by that figure, ties by name."""
    order = pd.DataFrame({"name": values.index.astype(str), "value": values.to_numpy(dtype=float)})
    order = order.sort_values(["value", "name"], ascending=[not highest_first, True], na_position="last")
    return list(order["name"])


def pick_series(names: Sequence[str], caption: str, key: str) -> list[str]:
    """The series to draw: every one when there are at most ``TOP_N``; else a multiselect of all of them, in the
    order of ``names``, and ``caption`` (how the first ones were chosen) under it.

    Until the reader changes the pick it is the first ``TOP_N`` of ``names``, so it follows the ranking (another
    figure, percentile or range); once changed, it is kept under ``key`` (listed in ``KEPT``) across pages and
    rankings, less the series no longer offered. A pick of which nothing is offered any more starts again from
    the ranking; one the reader emptied stays empty.
    """
    if len(names) <= TOP_N:
        return list(names)
    touched = f"{key}_touched"
    if st.session_state.get(touched):
        before = list(st.session_state.get(key) or [])
        kept = [n for n in before if n in names]
        if before and not kept:
            kept, st.session_state[touched] = list(names[:TOP_N]), False
        st.session_state[key] = kept
    else:
        st.session_state[key] = list(names[:TOP_N])
    picked = st.multiselect(
        t("common.series_shown"),
        list(names),
        key=key,
        placeholder=t("common.pick_series"),
        on_change=_touch,
        args=(touched,),
    )
    st.caption(t("common.series_count", shown=len(picked), total=len(names)) + " " + caption)
    if not picked:
        st.info(t("common.no_series"))
    return list(picked)


def _touch(flag: str) -> None:
    st.session_state[flag] = True


def choice(label_key: str, options: Sequence[Any], key: str, *, labels: dict[Any, str] | None = None) -> Any:
    """A horizontal radio whose value is kept across pages (default: the first option)."""
    if st.session_state.get(key) not in options:
        st.session_state[key] = options[0]
    return st.radio(
        t(label_key),
        options,
        key=key,
        horizontal=True,
        format_func=(lambda o: labels.get(o, str(o))) if labels else str,
    )


def window_name(window: str) -> str:
    """A quota window's name for the reader (``5 hours`` -> ``5時間``)."""
    key = "window." + window.replace(" ", "_")
    return t(key) if has(key) else window


def unit_name(unit: str, lang: str | None = None) -> str:
    """A quota unit for the reader (requests, prompts, tokens, calls)."""
    key = f"unit.{unit}"
    return t(key, lang) if has(key) else unit


def quantity(value: Any, unit: str) -> str:
    """A quota quantity in its unit: money for a currency, a percentage for ``%``, else a count."""
    if unit in fmt.CURRENCY_SIGNS:
        return fmt.money(value, unit)
    if unit == "%":
        return f"{fmt.number(value, 1)}%"
    return fmt.number(value)


def amount(value: Any, unit: str, lang: str | None = None) -> str:
    """A quantity with its unit: ``¥1,234``, ``45.0%`` or ``835 requests``."""
    if unit in fmt.CURRENCY_SIGNS or unit == "%":
        return quantity(value, unit)
    return f"{quantity(value, unit)} {unit_name(unit, lang)}"


def quota_usage(q: Any, lang: str) -> str:
    """``835 / 250 requests (334.0%)`` for a QuotaStatus."""
    unit = "" if q.unit in fmt.CURRENCY_SIGNS or q.unit == "%" else f" {unit_name(q.unit, lang)}"
    if q.limit is None:
        return f"{quantity(q.used, q.unit)}{unit}"
    return f"{quantity(q.used, q.unit)} / {quantity(q.limit, q.unit)}{unit} ({fmt.percent(q.share)})"


def quota_eta(q: Any, v: View) -> str:
    """Reset countdown, projected exhaustion and where the figure comes from, in one line."""
    parts = []
    if q.resets_at is not None:
        parts.append(
            t("quota.resets_in", left=fmt.duration(q.resets_at - v.now, v.lang), at=fmt.when(q.resets_at, v.zone))
        )
    if q.exhausts_at is not None:
        key = "quota.runs_out_before_reset" if q.runs_out_before_reset else "quota.exhausts_at"
        parts.append(t(key, at=fmt.when(q.exhausts_at, v.zone)))
    elif q.limit is not None:
        parts.append(t("quota.not_burning"))
    parts.append(t(f"quota.source_{q.source}"))
    return " · ".join(parts)


def _rate(value: Any) -> str:
    return f"{Decimal(str(value)).normalize():f}"


def fx_text(row: Any) -> str:
    """The exchange rates behind a ``costs`` row: ``USDJPY 150 · CNYJPY 21 (defaults)`` or ``(... dated up to
    2026-03-17)``; when its days used different rates, every rate as the analytics list them."""
    usd, cny, day = row["usd_jpy"], row["cny_jpy"], row["fx_day"]
    if usd is None or cny is None or pd.isna(usd) or pd.isna(cny):
        return str(row["fx_rates"] or fmt.MISSING)
    rates = f"USDJPY {_rate(usd)} · CNYJPY {_rate(cny)}"
    if day is None or pd.isna(day):
        return t("costs.fx_defaults", rates=rates)
    return t("costs.fx_dated", rates=rates, day=str(day))
