"""Costs: spend by day, provider, model and app in JPY, USD or CNY with the exchange rates used, cache hit ratio
and savings, and the detail table as CSV."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st
from monitor.dashboard import data, ui
from monitor.dashboard import format as fmt
from monitor.dashboard.i18n import t

v = ui.view()
ui.header(v, "costs.title")

CURRENCIES = ("JPY", "USD", "CNY")
DIMS = ("provider", "model", "app")
left, right = st.columns(2)
with left:
    currency = ui.choice("costs.currency", CURRENCIES, "currency", labels={c: t(f"currency.{c}") for c in CURRENCIES})
with right:
    dim = ui.choice("costs.group_by", DIMS, "cost_dim", labels={d: t(f"dim.{d}") for d in DIMS})
column = currency.lower()

whole = data.costs(v.url, v.filters, "total", (), v.zone_name, v.prices)
if whole.empty:
    st.info(t("common.no_data_range"))
    ui.footer(v)
    st.stop()
row = whole.iloc[0]
cells = st.columns(4)
cells[0].metric(t("costs.total", currency=currency), fmt.money(row[column], currency))
cells[1].metric(t("costs.requests"), fmt.number(row["requests"]))
cells[2].metric(t("costs.cache_hit"), fmt.percent(row["cache_hit_ratio"]))
cells[3].metric(t("costs.cache_savings", currency=currency), fmt.money(row[f"cache_savings_{column}"], currency))

# --- by day
st.subheader(t("costs.by_day", dim=t(f"dim.{dim}").lower()))
daily = data.costs(v.url, v.filters, "day", (dim,), v.zone_name, v.prices)
bars = pd.DataFrame(
    {
        "day": [f"{d:%m-%d}" for d in daily["period"]],
        "group": daily[dim].replace("", t("costs.unnamed")),
        "amount": daily[column].astype(float),
    }
)
chart = (
    alt.Chart(bars)
    .mark_bar()
    .encode(
        x=alt.X("day:O", title=None, axis=alt.Axis(labelAngle=0)),
        y=alt.Y("sum(amount):Q", title=t("costs.amount", currency=currency)),
        color=alt.Color("group:N", title=None, legend=alt.Legend(orient="bottom")),
        tooltip=[
            alt.Tooltip("day:O", title=t("costs.day")),
            alt.Tooltip("group:N", title=t(f"dim.{dim}")),
            alt.Tooltip(
                "amount:Q", title=t("costs.amount", currency=currency), format=",.0f" if currency == "JPY" else ",.2f"
            ),
        ],
    )
    .properties(height=320)
)
st.altair_chart(chart, width="stretch")
with st.container(key="fx-rates"):
    st.caption(t("costs.fx", rates=ui.fx_text(row)))
    if row["fx_day"] is None:
        st.caption(t("costs.fx_default"))

# --- by provider / model / app over the range
st.subheader(t("costs.by_group", dim=t(f"dim.{dim}").lower()))
groups = data.costs(v.url, v.filters, "total", (dim,), v.zone_name, v.prices)
st.dataframe(
    pd.DataFrame(
        {
            t(f"dim.{dim}"): groups[dim].replace("", t("costs.unnamed")),
            t("costs.amount", currency=currency): [fmt.money(a, currency) for a in groups[column]],
            t("costs.requests"): groups["requests"].map(fmt.number),
            t("costs.input_tokens"): groups["input_tokens"].map(fmt.number),
            t("costs.output_tokens"): groups["output_tokens"].map(fmt.number),
            t("costs.cache_hit"): groups["cache_hit_ratio"].map(fmt.percent),
            t("costs.cache_savings", currency=currency): [
                fmt.money(a, currency) for a in groups[f"cache_savings_{column}"]
            ],
        }
    ),
    hide_index=True,
)

# --- the detail table: local day x provider x model x app, downloadable
st.subheader(t("costs.detail"))
detail = data.costs(v.url, v.filters, "day", ("provider", "model", "app"), v.zone_name, v.prices)
shown = pd.DataFrame(
    {
        t("costs.day"): detail["period"].astype(str),
        t("dim.provider"): detail["provider"],
        t("dim.model"): detail["model"],
        t("dim.app"): detail["app"].replace("", t("costs.unnamed")),
        t("costs.requests"): detail["requests"].map(fmt.number),
        t("costs.amount", currency=currency): [fmt.money(a, currency) for a in detail[column]],
        t("costs.rates"): [
            ui.fx_text(r) for r in detail[["usd_jpy", "cny_jpy", "fx_day", "fx_rates"]].to_dict("records")
        ],
    }
)
st.dataframe(shown, hide_index=True)
csv = detail.to_csv(index=False).encode("utf-8-sig")  # the BOM lets Excel read UTF-8 (Japanese app names)
name = f"glm-monitor-costs-{v.filters.start.astimezone(v.zone):%Y%m%d}-{v.filters.end.astimezone(v.zone):%Y%m%d}.csv"
st.download_button(
    t("costs.download"),
    csv,
    file_name=name,
    mime="text/csv",
    on_click="ignore",
    icon=":material/download:",
    key="costs-csv",
)
st.caption(t("costs.csv_caption"))

ui.footer(v)
