"""Quota: a gauge per plan window (used of limit, reset countdown, projected exhaustion, official or estimated)."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st
from monitor.dashboard import data, ui
from monitor.dashboard import format as fmt
from monitor.dashboard.i18n import t

v = ui.view()
st.title(t("quota.title"))
st.caption(t("quota.caption", now=fmt.when(v.now, v.zone)))

statuses = data.quotas(v.url, v.settings_json, v.now)
if not statuses:
    st.info(t("quota.none"))
    st.markdown(t("quota.how"))


def gauge(share: float | None) -> alt.LayerChart:
    """A ring filled to ``share`` (capped at 100%), green / orange / red, with the percentage inside."""
    filled = min(max(share or 0.0, 0.0), 1.0)
    colour = "#2e7d32" if filled < 0.7 else "#ef6c00" if filled < 0.9 else "#c62828"
    ring = pd.DataFrame({"part": ["used", "left"], "value": [filled, 1.0 - filled]})
    arc = (
        alt.Chart(ring)
        .mark_arc(innerRadius=42, outerRadius=60)
        .encode(
            theta=alt.Theta("value:Q", stack=True),
            color=alt.Color("part:N", scale=alt.Scale(domain=["used", "left"], range=[colour, "#e0e0e0"]), legend=None),
            order=alt.Order("part:N", sort="descending"),
        )
    )
    label = (
        alt.Chart(pd.DataFrame({"text": [fmt.percent(share, 0)]}))
        .mark_text(fontSize=18, fontWeight="bold")
        .encode(text="text:N")
    )
    return (arc + label).properties(width=140, height=140)


plans: dict[str, list] = {}
for q in statuses:
    plans.setdefault(q.plan, []).append(q)
for plan, windows in plans.items():
    st.subheader(f"{plan} · {t('kind.' + windows[0].kind)}")
    columns = st.columns(max(len(windows), 3))
    for column, q in zip(columns, windows, strict=False):
        with column.container(border=True, key=ui.css_key("quota", plan, q.window)):
            st.markdown(f"**{ui.window_name(q.window)}**")
            st.badge(t(f"quota.source_{q.source}"), color="blue" if q.source == "official" else "gray")
            st.altair_chart(gauge(q.share), width="content")
            st.metric(t("quota.used"), ui.quota_usage(q, v.lang))
            if q.burn_per_hour is not None:
                st.caption(t("quota.burn", rate=ui.amount(q.burn_per_hour, q.unit)))
            if q.resets_at is not None:
                st.caption(
                    t(
                        "quota.resets_in",
                        left=fmt.duration(q.resets_at - v.now, v.lang),
                        at=fmt.when(q.resets_at, v.zone),
                    )
                )
            if q.exhausts_at is not None:
                text = t(
                    "quota.runs_out_before_reset" if q.runs_out_before_reset else "quota.exhausts_at",
                    at=fmt.when(q.exhausts_at, v.zone),
                )
                (st.warning if q.runs_out_before_reset else st.caption)(text)
            elif q.limit is not None:
                st.caption(t("quota.not_burning"))
            if q.notes:
                with st.expander(t("quota.notes")):
                    for note in q.notes:
                        st.caption(note)

ui.footer(v)
