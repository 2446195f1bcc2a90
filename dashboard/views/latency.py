"""Latency: TTFT, total time and output speed over time, the weekday x hour profile, peak-hour slowdown, and the
same model across providers."""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

import altair as alt
import pandas as pd
import streamlit as st
from monitor.dashboard import data, ui
from monitor.dashboard import format as fmt
from monitor.dashboard.i18n import t, weekdays

from monitor import analytics

v = ui.view()
ui.header(v, "latency.title")

METRICS = ("ttft_ms", "total_ms", "tokens_per_s")
metric_labels = {m: t(f"metric.{m}") for m in METRICS}
left, middle, right = st.columns(3)
with left:
    metric = ui.choice("latency.metric", METRICS, "lat_metric", labels=metric_labels)
with middle:
    pct = ui.choice("latency.percentile", ("p50", "p95", "p99"), "lat_pct")
with right:
    gran_choice = ui.choice(
        "latency.granularity",
        ("auto", "hour", "day"),
        "lat_gran",
        labels={g: t(f"granularity.{g}") for g in ("auto", "hour", "day")},
    )
granularity = ui.granularity(v, gran_choice)
is_speed = metric == "tokens_per_s"
show = fmt.per_second if is_speed else fmt.ms

# --- over time
st.subheader(t("latency.over_time", metric=metric_labels[metric], pct=pct))
frame = data.latency(v.url, v.filters, granularity, v.zone_name, metric)
frame = frame[frame["metric"] == metric] if not frame.empty else frame
if frame.empty:
    st.info(t("common.no_data_range"))
else:
    chart = pd.DataFrame(
        {
            "when": ui.local_times(frame["period"], v.zone),
            "series": [
                ui.target(p, m, van)
                for p, m, van in zip(frame["provider"], frame["model"], frame["vantage"], strict=True)
            ],
            "value": frame[pct].astype(float),
        }
    )
    # Slowest first: the highest mean of the percentile over the range (for output speed, the lowest).
    ranked = ui.ranked(chart.groupby("series")["value"].mean(), highest_first=not is_speed)
    shown = ui.pick_series(ranked, t("latency.series_caption", n=ui.TOP_N, pct=pct), "lat_series")
    if shown:
        ui.line_chart(
            chart[chart["series"].isin(shown)],
            y="value",
            y_title=f"{metric_labels[metric]} {pct}",
            y_format=",.1f" if is_speed else ",.0f",
            hourly=granularity == "hour",
        )

# --- weekday x hour profile
st.subheader(t("latency.profile", metric=metric_labels[metric]))
zones = {"cst": ui.PEAK_ZONE, "local": v.zone_name}
zone_labels = {
    "cst": fmt.zone_label(ZoneInfo(ui.PEAK_ZONE), v.now),
    "local": fmt.zone_label(v.zone, v.now),
}
zone_key = ui.choice("latency.zone", tuple(zones), "heat_zone", labels=zone_labels)
profile = data.profile(v.url, v.filters, zones[zone_key], metric)
if profile.empty:
    st.info(t("common.no_data_range"))
else:
    targets = sorted({(p, m) for p, m in zip(profile["provider"], profile["model"], strict=True)})
    names = [ui.target(p, m) for p, m in targets]
    if st.session_state.get("heat_target") not in names:
        st.session_state["heat_target"] = names[0]
    picked = st.selectbox(t("latency.target"), names, key="heat_target")
    provider, model = targets[names.index(picked)]
    one = profile[(profile["provider"] == provider) & (profile["model"] == model)]
    days = weekdays()
    grid = pd.DataFrame(
        {
            "weekday": [days[int(d)] for d in one["weekday"]],
            "hour": one["hour"].astype(int),
            "value": one["p50"].astype(float),
            "samples": one["samples"].astype(int),
        }
    )
    heat = (
        alt.Chart(grid)
        .mark_rect()
        .encode(
            x=alt.X("hour:O", title=t("latency.hour_of_day", zone=zone_labels[zone_key])),
            y=alt.Y("weekday:N", sort=days, title=None),
            color=alt.Color(
                "value:Q",
                title=f"{metric_labels[metric]} p50",
                scale=alt.Scale(scheme="viridis" if is_speed else "orangered"),
            ),
            tooltip=[
                alt.Tooltip("weekday:N", title=t("latency.weekday")),
                alt.Tooltip("hour:O", title=t("latency.hour")),
                alt.Tooltip("value:Q", title=f"{metric_labels[metric]} p50", format=",.1f" if is_speed else ",.0f"),
                alt.Tooltip("samples:Q", title=t("common.samples"), format=","),
            ],
        )
        .properties(height=260)
    )
    st.altair_chart(heat, width="stretch")
    shown = v.filters.tail(analytics.PROFILE_SPAN)  # a shorter range is drawn whole: say how much that is
    st.caption(t("latency.profile_caption", days=f"{round((shown.end - shown.start) / timedelta(days=1), 1):g}"))

# --- peak slowdown
st.subheader(t("latency.peak"))
peaks = data.peak(v.url, v.filters, metric)
if peaks.empty:
    st.info(t("common.no_data_range"))
else:
    # One table rather than a tile per target (30 tiles took the browser longer to draw than the charts), and a
    # data grid rather than st.table, which renders every cell as Markdown (180 cells: ~0.4 s in the browser).
    ordered = peaks.sort_values("ratio", ascending=is_speed, kind="stable")
    st.dataframe(
        pd.DataFrame(
            {
                t("latency.target"): [
                    ui.target(p, m) for p, m in zip(ordered["provider"], ordered["model"], strict=True)
                ],
                t("latency.peak_ratio"): ordered["ratio"].map(fmt.ratio),
                t("latency.peak_median"): ordered["peak_median"].map(show),
                t("latency.offpeak_median"): ordered["offpeak_median"].map(show),
                t("latency.peak_samples"): ordered["peak_samples"].map(fmt.number),
                t("latency.offpeak_samples"): ordered["offpeak_samples"].map(fmt.number),
            }
        ),
        hide_index=True,
    )
    st.caption(
        t("latency.peak_caption", window=str(peaks["window"].iloc[0]), days=analytics.PEAK_SPAN.days)
        + (" " + t("latency.peak_speed") if is_speed else "")
    )

# --- the same model across providers
st.subheader(t("latency.compare"))
compare = data.compare(v.url, v.filters, v.prices)
if compare.empty:
    st.info(t("common.no_data_range"))
else:
    table = pd.DataFrame(
        {
            t("compare.family"): compare["model_family"],
            t("compare.provider"): compare["provider"],
            t("compare.model"): compare["model"],
            t("compare.ttft_p50"): compare["ttft_p50_ms"].map(fmt.ms),
            t("compare.ttft_p95"): compare["ttft_p95_ms"].map(fmt.ms),
            t("compare.total_p50"): compare["total_p50_ms"].map(fmt.ms),
            t("compare.tps_p50"): compare["tokens_per_s_p50"].map(fmt.per_second),
            t("compare.rate_429"): compare["rate_429"].map(fmt.percent),
            t("compare.input_price"): [
                fmt.money(p, c) if c else fmt.MISSING
                for p, c in zip(compare["input_per_mtok"], compare["currency"], strict=True)
            ],
            t("compare.output_price"): [
                fmt.money(p, c) if c else fmt.MISSING
                for p, c in zip(compare["output_per_mtok"], compare["currency"], strict=True)
            ],
            t("compare.samples"): compare["samples"].map(fmt.number),
        }
    )
    st.dataframe(table, hide_index=True)
    st.caption(t("compare.caption", at=fmt.when(v.filters.end, v.zone)))

ui.footer(v)
