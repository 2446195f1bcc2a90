"""Quota: a gauge per plan window (used of limit, reset countdown, projected exhaustion, official or estimated)."""

from __future__ import annotations

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


def gauge(share: float | None) -> str:
    """A ring filled to ``share`` (capped at 100%), green / orange / red, with the percentage inside, as HTML.

    Drawn with CSS (a conic gradient masked to a ring) rather than a Vega chart: a chart per plan window made
    this page the slowest to draw, for a picture that needs no axes or tooltips.
    """
    filled = min(max(share or 0.0, 0.0), 1.0)
    colour = "#2e7d32" if filled < 0.7 else "#ef6c00" if filled < 0.9 else "#c62828"
    ring = "radial-gradient(farthest-side, transparent calc(100% - 18px), #000 calc(100% - 17px))"
    return (
        f'<div class="glm-gauge" role="img" aria-label="{fmt.percent(share, 0)}" '
        'style="position:relative;width:120px;height:120px;margin:4px 0">'
        f'<div style="position:absolute;inset:0;border-radius:50%;'
        f"background:conic-gradient({colour} {filled * 100:.1f}%, rgba(128,128,128,0.22) 0);"
        f'-webkit-mask:{ring};mask:{ring}"></div>'
        '<div class="glm-gauge-text" style="position:absolute;inset:0;display:flex;align-items:center;'
        f'justify-content:center;font-size:18px;font-weight:700">{fmt.percent(share, 0)}</div></div>'
    )


plans: dict[str, list] = {}
for q in statuses:
    plans.setdefault(q.plan, []).append(q)
for plan, windows in plans.items():
    st.subheader(f"{plan} · {t('kind.' + windows[0].kind)}")
    columns = st.columns(max(len(windows), 3))
    for column, q in zip(columns, windows, strict=False):
        with column.container(border=True, key=ui.css_key("quota", plan, q.window)):
            source = t(f"quota.source_{q.source}")
            st.markdown(
                f"**{ui.md(ui.window_name(q.window))}** :{'blue' if q.source == 'official' else 'gray'}-badge[{source}]"
            )
            st.html(gauge(q.share))
            st.metric(t("quota.used"), ui.quota_usage(q, v.lang))
            # One caption for the pace, the reset and the projection: fewer elements for the browser to draw.
            lines = []
            if q.burn_per_hour is not None:
                lines.append(t("quota.burn", rate=ui.amount(q.burn_per_hour, q.unit)))
            if q.resets_at is not None:
                lines.append(
                    t(
                        "quota.resets_in",
                        left=fmt.duration(q.resets_at - v.now, v.lang),
                        at=fmt.when(q.resets_at, v.zone),
                    )
                )
            if q.exhausts_at is not None and not q.runs_out_before_reset:
                lines.append(t("quota.exhausts_at", at=fmt.when(q.exhausts_at, v.zone)))
            elif q.exhausts_at is None and q.limit is not None:
                lines.append(t("quota.not_burning"))
            if lines:
                st.caption("  \n".join(lines))
            if q.exhausts_at is not None and q.runs_out_before_reset:
                st.warning(t("quota.runs_out_before_reset", at=fmt.when(q.exhausts_at, v.zone)))
            if q.notes:
                with st.expander(t("quota.notes")):
                    for note in q.notes:
                        st.caption(note)

ui.footer(v)
