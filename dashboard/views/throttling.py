"""Throttling: the 429 rate over time, and the breakdown by outcome and provider code, probes and real traffic
apart, with the Retry-After values seen."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st
from monitor.dashboard import data, ui
from monitor.dashboard import format as fmt
from monitor.dashboard.i18n import t

v = ui.view()
ui.header(v, "throttling.title")

gran_choice = ui.choice(
    "latency.granularity",
    ("auto", "hour", "day"),
    "thr_gran",
    labels={g: t(f"granularity.{g}") for g in ("auto", "hour", "day")},
)
granularity = ui.granularity(v, gran_choice)

TRAFFIC = ("probe", "real")

# --- headline figures over the whole range
probe_total = data.throttle(v.url, v.filters, "probe", None, (), v.zone_name)
real_total = data.throttle(v.url, v.filters, "real", None, (), v.zone_name)
cells = [(t("throttling.rate_probe"), probe_total.iloc[0] if not probe_total.empty else None)]
cells += [(t("throttling.rate_real", source=ui.source(row.source)), row) for row in real_total.itertuples(index=False)]
columns = st.columns(max(len(cells) + 1, 3))
for column, (label, row) in zip(columns, cells, strict=False):
    if row is None:
        column.metric(label, fmt.MISSING)
    else:
        column.metric(
            label,
            fmt.percent(row.rate_429),
            help=t("throttling.rate_help", http_429=fmt.number(row.http_429), requests=fmt.number(row.requests)),
        )
retry_max = probe_total["retry_after_max_s"].iloc[0] if not probe_total.empty else None
columns[len(cells)].metric(t("throttling.retry_after_max"), fmt.seconds(retry_max))


def section(traffic: str) -> None:
    """The 429 rate over time and the outcome / code breakdown of ``traffic`` (probe or real)."""
    rates = data.throttle(v.url, v.filters, traffic, granularity, ("provider", "model"), v.zone_name)
    st.markdown(f"**{t('throttling.over_time')}**")
    if rates.empty:
        st.info(t("common.no_data_range"))
        return
    targets = [ui.target(p, m) for p, m in zip(rates["provider"], rates["model"], strict=True)]
    series = targets
    if traffic == "real":
        series = [f"{s} ({ui.source(src)})" for s, src in zip(targets, rates["source"], strict=True)]
    chart = pd.DataFrame(
        {
            "when": ui.local_times(rates["period"], v.zone),
            "series": series,
            "target": targets,
            "value": rates["rate_429"].astype(float),
            "http_429": rates["http_429"].astype(float),
            "requests": rates["requests"].astype(float),
        }
    )
    # The highest 429 rate over the whole range first (429s / requests of the series, not a mean of rates).
    sums = chart.groupby("series")[["http_429", "requests"]].sum()
    ranked = ui.ranked(sums["http_429"] / sums["requests"].where(sums["requests"] > 0), highest_first=True)
    shown = ui.pick_series(ranked, t("throttling.series_caption", n=ui.TOP_N), f"thr_series_{traffic}")
    drawn = chart[chart["series"].isin(shown)]
    if shown:
        ui.line_chart(
            drawn[["when", "series", "value"]],
            y="value",
            y_title=t("throttling.rate_429"),
            y_format=".1%",
            hourly=granularity == "hour",
        )

    st.markdown(f"**{t('throttling.breakdown')}**")
    parts = data.breakdown(v.url, v.filters, traffic, v.zone_name)
    if parts.empty:
        st.info(t("common.no_data_range"))
        return
    # The bars follow the series picked above: one colour per drawn provider/model.
    picked = set(drawn["target"])
    in_picked = pd.Series(
        [ui.target(p, m) in picked for p, m in zip(parts["provider"], parts["model"], strict=True)], index=parts.index
    )
    failed = parts[(parts["outcome"] != "ok") & in_picked]
    if not failed.empty:
        bars = pd.DataFrame(
            {
                "code": [
                    f"{code} {ui.outcome(o)}" if code else ui.outcome(o)
                    for o, code in zip(failed["outcome"], failed["error_code"], strict=True)
                ],
                "series": [ui.target(p, m) for p, m in zip(failed["provider"], failed["model"], strict=True)],
                "requests": failed["requests"].astype(int),
            }
        )
        chart = (
            alt.Chart(bars)
            .mark_bar()
            .encode(
                x=alt.X("sum(requests):Q", title=t("throttling.requests")),
                y=alt.Y("code:N", title=None, sort="-x", axis=alt.Axis(labelLimit=260)),
                color=alt.Color("series:N", title=None, legend=alt.Legend(orient="bottom")),
                tooltip=[
                    alt.Tooltip("code:N", title=t("throttling.code")),
                    alt.Tooltip("series:N", title=t("common.series")),
                    alt.Tooltip("requests:Q", title=t("throttling.requests"), format=","),
                ],
            )
            .properties(height=alt.Step(28))
        )
        st.altair_chart(chart, width="stretch")
    table = pd.DataFrame(
        {
            t("compare.provider"): parts["provider"],
            t("compare.model"): parts["model"],
            t("throttling.source"): parts["source"].map(ui.source),
            t("throttling.outcome"): parts["outcome"].map(ui.outcome),
            t("throttling.code"): parts["error_code"].replace("", fmt.MISSING),
            t("throttling.requests"): parts["requests"].map(fmt.number),
            t("throttling.http_429"): parts["http_429"].map(fmt.number),
            t("throttling.share"): parts["share"].map(fmt.percent),
        }
    )
    st.dataframe(table, hide_index=True)


# One kind of traffic at a time: drawing both (as tabs would) doubles the charts the browser must draw.
traffic = ui.choice(
    "throttling.traffic",
    TRAFFIC,
    "thr_traffic",
    labels={"probe": t("throttling.probes"), "real": t("throttling.real")},
)
if traffic == "probe":
    section("probe")
    st.markdown(f"**{t('throttling.retry_after')}**")
    retry = data.throttle(v.url, v.filters, "probe", None, ("provider", "model"), v.zone_name)
    if retry.empty or retry["retry_after_max_s"].isna().all():
        st.caption(t("throttling.no_retry_after"))
    else:
        st.dataframe(
            pd.DataFrame(
                {
                    t("compare.provider"): retry["provider"],
                    t("compare.model"): retry["model"],
                    t("throttling.retry_mean"): retry["retry_after_mean_s"].map(fmt.seconds),
                    t("throttling.retry_max"): retry["retry_after_max_s"].map(fmt.seconds),
                }
            ),
            hide_index=True,
        )
else:
    section("real")
    st.caption(t("throttling.real_caption"))

ui.footer(v)
