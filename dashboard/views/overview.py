"""Overview: each provider and model right now, the month's spend with its forecast, the quotas nearest their end."""

from __future__ import annotations

import streamlit as st
from monitor.dashboard import data, ui
from monitor.dashboard import format as fmt
from monitor.dashboard.i18n import t

v = ui.view()
ui.header(v, "overview.title")

st.subheader(t("overview.health"))
targets = data.health(v.url, v.now, v.filters)
if not targets:
    st.info(t("overview.no_recent"))
# One Markdown element per tile: a tile of a badge, two st.metric and a caption cost the browser five elements,
# and at 30 targets that alone kept the page over its 2 s budget (bench/dashboard.py).
per_row = 4
for first in range(0, len(targets), per_row):
    columns = st.columns(per_row)
    for column, h in zip(columns, targets[first : first + per_row], strict=False):
        with column.container(border=True, key=ui.css_key("tile", h.provider, h.model)):
            st.markdown(ui.health_tile(h))
st.caption(t("overview.health_window", since=fmt.when(targets[0].since, v.zone)) if targets else "")

st.subheader(t("overview.spend"))
columns = st.columns(4)
for i, currency in enumerate(("JPY", "USD")):
    forecast = data.spend_forecast(v.url, v.now, v.filters, currency, v.zone_name)
    columns[2 * i].metric(t("overview.mtd", currency=currency), fmt.money(forecast.month_to_date, currency))
    columns[2 * i + 1].metric(t("overview.forecast", currency=currency), fmt.money(forecast.forecast, currency))
st.caption(t("overview.forecast_method", month=f"{forecast.month:%Y-%m}", days=fmt.number(forecast.days_remaining, 1)))

st.subheader(t("overview.quotas"))
statuses = data.quotas(v.url, v.settings_json, v.now)
if not statuses:
    st.info(t("quota.none"))
else:
    # Nearest the end first: the largest share used; windows without a limit last.
    nearest = sorted(statuses, key=lambda q: -1.0 if q.share is None else q.share, reverse=True)[:3]
    columns = st.columns(len(nearest))
    for column, q in zip(columns, nearest, strict=True):
        with column.container(border=True):
            st.markdown(f"**{q.plan}** · {ui.window_name(q.window)}")
            st.progress(min(max(q.share or 0.0, 0.0), 1.0), text=ui.quota_usage(q, v.lang))
            st.caption(ui.quota_eta(q, v))

ui.footer(v)
