"""Probes: the latest probe results with their errors, filterable by outcome."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from monitor.dashboard import data, ui
from monitor.dashboard import format as fmt
from monitor.dashboard.i18n import t

from monitor.outcomes import Outcome

v = ui.view()
ui.header(v, "probes.title")

OUTCOMES = tuple(str(o) for o in Outcome)
left, right = st.columns([3, 1], vertical_alignment="bottom")
st.session_state.setdefault("probe_outcomes", [])
st.session_state["probe_outcomes"] = [o for o in st.session_state["probe_outcomes"] if o in OUTCOMES]
labels = {o: ui.outcome(o) for o in OUTCOMES}
picked = left.multiselect(
    t("probes.outcomes"), OUTCOMES, key="probe_outcomes", format_func=labels.__getitem__, placeholder=t("filters.all")
)
st.session_state.setdefault("probe_errors_only", False)
errors_only = right.toggle(t("probes.errors_only"), key="probe_errors_only")
wanted = tuple(picked) if picked else ()
if errors_only:
    wanted = tuple(o for o in (wanted or OUTCOMES) if o != "ok")

rows = data.latest_probes(v.url, v.filters, wanted)
if rows.empty:
    st.info(t("probes.none"))
else:
    st.caption(t("probes.count", n=fmt.number(len(rows)), limit=fmt.number(data.PROBE_LIMIT)))
    table = pd.DataFrame(
        {
            t("probes.time"): [fmt.when(ts.to_pydatetime(), v.zone, seconds=True) for ts in rows["ts"]],
            t("dim.provider"): rows["provider"],
            t("dim.model"): rows["model"],
            t("dim.vantage"): rows["vantage"],
            t("throttling.outcome"): rows["outcome"].map(ui.outcome),
            t("probes.http"): rows["http_status"].map(lambda s: fmt.MISSING if pd.isna(s) else str(int(s))),
            t("throttling.code"): [fmt.MISSING if pd.isna(c) or not c else str(c) for c in rows["error_code"]],
            t("probes.error"): ["" if pd.isna(m) else str(m) for m in rows["error_message"]],
            t("metric.ttft_ms"): rows["ttft_ms"].map(fmt.ms),
            t("metric.total_ms"): rows["total_ms"].map(fmt.ms),
            t("metric.tokens_per_s"): rows["tokens_per_s"].map(fmt.per_second),
            t("probes.retry_after"): rows["retry_after_s"].map(fmt.seconds),
        }
    )
    st.dataframe(table, hide_index=True, height=560)

ui.footer(v)
