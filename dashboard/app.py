"""GLM Monitor dashboard: the entry script (``streamlit run``; started by ``glm-monitor dashboard``).

Every run: settings (from the launcher or the config file), the password gate, the language switch, the
database check (an empty database shows how to get data, an unreachable one names its URL), the filters, then
the selected page from ``views/`` (not ``pages/``: Streamlit would take that folder for its older
multipage mode and run the pages without this script).
"""

from __future__ import annotations

import time

import streamlit as st
import streamlit.delta_generator
from sqlalchemy.exc import SQLAlchemyError

from monitor.dashboard_cmd import import_dashboard

import_dashboard()

from monitor.dashboard import auth, data, i18n, ui  # noqa: E402 - needs the package registered first
from monitor.dashboard.i18n import t  # noqa: E402

st.session_state["_run_started"] = time.perf_counter()  # the footer shows how long this run took
# On the first element of a process Streamlit asks whether it runs in a REPL (to warn about `python app.py`):
# inspect.stack() then resolves the file of every loaded module, ~0.1 s of the first page view after a start
# (more on a busy machine). This script always runs under `streamlit run`: skip the question.
streamlit.delta_generator._use_warning_has_been_displayed = True
st.set_page_config(page_title="GLM Monitor", page_icon=":material/monitor_heart:", layout="wide")
ui.keep_state()
settings = ui.load()
st.session_state.setdefault("lang", settings.language)
st.sidebar.radio("言語 / Language", i18n.LANGUAGES, key="lang", horizontal=True, format_func=i18n.LANGUAGE_NAMES.get)
auth.gate(settings)

PAGES = (
    ("views/overview.py", "page.overview", ":material/dashboard:", "overview"),
    ("views/latency.py", "page.latency", ":material/speed:", "latency"),
    ("views/throttling.py", "page.throttling", ":material/block:", "throttling"),
    ("views/costs.py", "page.costs", ":material/payments:", "costs"),
    ("views/quota.py", "page.quota", ":material/data_usage:", "quota"),
    ("views/probes.py", "page.probes", ":material/list_alt:", "probes"),
)
page = st.navigation(
    [
        st.Page(path, title=t(title), icon=icon, url_path=url, default=i == 0)
        for i, (path, title, icon, url) in enumerate(PAGES)
    ]
)
url = settings.database.url
status = data.status(url)
if status.kind == "error":
    ui.db_error(status)
elif status.kind != "ok":
    ui.no_data(status)
else:
    st.session_state["_view"] = ui.sidebar(settings, url, ui.now())
    try:
        page.run()
    except SQLAlchemyError as exc:
        data.clear()
        ui.db_error(data.DbStatus("error", status.url, data.error_text(exc, url)))
