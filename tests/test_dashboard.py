"""The Streamlit dashboard, run with Streamlit's AppTest on real SQLite databases (seeded, empty, missing).

Every page is run in Japanese and English; the key figures a reader checks (month-to-date spend, peak ratio,
429 rate, cost totals, quota usage) must equal the analytics functions' values, formatted. Also: the friendly
page of an empty database, the error naming an unreachable database without its password, the password gate,
filters kept across pages, the message catalog, the number formats and the launcher's safety checks.
"""

from __future__ import annotations

import ast
import re
import string
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest
from streamlit import config as st_config
from streamlit.testing.v1 import AppTest

from monitor import analytics
from monitor.analytics import Filters
from monitor.config import Settings, settings_from_dict
from monitor.dashboard_cmd import (
    AS_OF_ENV,
    SETTINGS_ENV,
    app_path,
    check_exposure,
    dashboard_command,
    dashboard_environ,
    import_dashboard,
    is_loopback,
    launch,
    settings_from_environ,
)
from monitor.demo import backfill, demo_settings
from monitor.errors import ConfigError
from monitor.fx import store_rates
from monitor.outcomes import Outcome
from monitor.quota import quota_statuses
from monitor.rollup import refresh_rollups
from monitor.store import make_engine, upgrade

import_dashboard()
from monitor.dashboard import format as fmt  # noqa: E402
from monitor.dashboard import i18n, ui  # noqa: E402

APP = app_path()
DASHBOARD = APP.parent
AS_OF = datetime(2026, 3, 18, 9, 30, tzinfo=UTC)  # a Wednesday; 17:30 in Shanghai, just after the peak
PAGES = {
    "overview": "overview.title",
    "latency": "latency.title",
    "throttling": "throttling.title",
    "costs": "costs.title",
    "quota": "quota.title",
    "probes": "probes.title",
}
LANGS = ("ja", "en")
# The app's default range (last 7 days) as whole UTC hours ending with the hour that holds AS_OF.
RANGE_END = AS_OF.replace(minute=0) + timedelta(hours=1)
RANGE = Filters(RANGE_END - timedelta(days=7), RANGE_END)


@dataclass(frozen=True)
class Seeded:
    url: str
    settings: Settings


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    """A demo database with 7 days of history ending at AS_OF, rolled up."""
    url = f"sqlite:///{tmp_path_factory.mktemp('dash') / 'demo.db'}"
    upgrade(url)
    settings = demo_settings("http://127.0.0.1:9", url)
    engine = make_engine(url)
    backfill(engine, settings, 7, now=AS_OF)
    refresh_rollups(engine, now=AS_OF)
    engine.dispose()
    yield Seeded(url, settings)


@pytest.fixture
def loopback() -> Iterator[None]:
    """The server address the launcher sets: the app only serves without a password on loopback."""
    before = st_config.get_option("server.address")
    st_config.set_option("server.address", "127.0.0.1")
    yield
    st_config.set_option("server.address", before)


def use(monkeypatch: pytest.MonkeyPatch, settings, *, as_of: datetime | None = AS_OF) -> None:
    """Hand the settings to the app as the launcher does (environment variables)."""
    env = dashboard_environ(settings, as_of=as_of, base={})
    for name in (SETTINGS_ENV, AS_OF_ENV):
        if name in env:
            monkeypatch.setenv(name, env[name])
        else:
            monkeypatch.delenv(name, raising=False)


def open_app(lang: str, page: str = "overview") -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.session_state["lang"] = lang
    at.run()
    if page != "overview":
        at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def tile_texts(at: AppTest) -> list[str]:
    """The Markdown of the Overview's provider/model tiles (each one text with TTFT and 429 rate)."""
    return [m.value for m in at.markdown if "TTFT **" in m.value or "TTFT 中央値 **" in m.value]


def peak_table(at: AppTest) -> dict[str, str]:
    """The Latency page's peak-slowdown table (its first): provider / model -> ratio shown."""
    table = at.dataframe[0].value
    return dict(zip(table.iloc[:, 0], table.iloc[:, 1], strict=True))


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "info", "warning", "error", "code") for e in at.get(kind)]
    return "\n".join(str(p) for p in parts)


# ---------------------------------------------------------------------------------------------------------
# Every page, both languages


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("page", list(PAGES))
def test_every_page_renders_in_both_languages(seeded, monkeypatch, loopback, page, lang):
    settings = seeded.settings
    use(monkeypatch, settings)
    at = open_app(lang, page)
    assert not at.error, [e.value for e in at.error]
    assert [t.value for t in at.title] == [i18n.t(PAGES[page], lang)]
    footer = at.get("caption")[-1].value
    assert footer.startswith(i18n.t("common.footer", lang, url="x", ttl=0, seconds="0").split("x")[0])
    # every label is in the reader's language: no catalog key leaks through as text
    leaked = re.findall(
        r"\b(?:" + "|".join(sorted({k.split(".")[0] for k in i18n.MESSAGES["en"]})) + r")\.[a-z0-9_]+\b", texts(at)
    )
    assert not [k for k in leaked if i18n.has(k)], leaked


def test_overview_shows_the_analytics_figures(seeded, monkeypatch, loopback):
    url, settings = seeded.url, seeded.settings
    use(monkeypatch, settings)
    at = open_app("en")
    shown = [(m.label, m.value) for m in at.metric]
    engine = make_engine(url)
    try:
        for currency in ("JPY", "USD"):
            forecast = analytics.spend_forecast(engine, RANGE, now=AS_OF, zone="Asia/Tokyo", currency=currency)
            assert forecast.has_data
            assert (f"Month to date ({currency})", fmt.money(forecast.month_to_date, currency)) in shown
            assert (f"End-of-month forecast ({currency})", fmt.money(forecast.forecast, currency)) in shown
        targets = analytics.health(engine, now=AS_OF)
    finally:
        engine.dispose()
    assert len(targets) == 4
    # One tile per provider/model, in the order of analytics.health, each one Markdown text with its figures.
    tiles = tile_texts(at)
    assert [tile.splitlines()[0].strip() for tile in tiles] == [f"**{h.provider}** / {h.model}" for h in targets]
    for tile, h in zip(tiles, targets, strict=True):
        assert f"Median TTFT **{fmt.ms(h.median_ttft_ms)}**" in tile
        assert f"429 rate **{fmt.percent(h.rate_429)}**" in tile
        assert f"-badge[{i18n.t(f'status.{h.status}', 'en')}]" in tile
        assert f"{h.ok} of {h.requests} ok, {h.throttled} throttled" in tile
    assert {h.status for h in targets} >= {"healthy", "throttled"}  # the demo's flash model throttles


def test_yen_spend_in_japanese_is_written_with_the_yen_sign(seeded, monkeypatch, loopback):
    settings = seeded.settings
    use(monkeypatch, settings)
    values = metrics(open_app("ja"))
    mtd = values["今月の支出 (JPY)"]
    assert re.fullmatch(r"¥[0-9,]+", mtd), mtd
    assert re.fullmatch(r"\$[0-9,]+\.[0-9]{2}", values["今月の支出 (USD)"])


def test_latency_page_peak_ratios_equal_peak_slowdown(seeded, monkeypatch, loopback):
    url, settings = seeded.url, seeded.settings
    use(monkeypatch, settings)
    at = open_app("en", "latency")
    engine = make_engine(url)
    try:
        peaks = analytics.peak_slowdown(engine, RANGE.tail(analytics.PEAK_SPAN))
    finally:
        engine.dispose()
    assert len(peaks) == 4
    table = at.dataframe[0].value
    assert list(table.columns[:2]) == ["Provider / model", "Ratio"]
    assert peak_table(at) == {f"{row.provider} / {row.model}": fmt.ratio(row.ratio) for row in peaks.itertuples()}
    assert list(table["Ratio"]) == [fmt.ratio(r) for r in sorted(peaks["ratio"], reverse=True)]  # slowest first
    shown = dict(zip(table["Provider / model"], table["Peak median"], strict=True))
    assert shown == {f"{row.provider} / {row.model}": fmt.ms(row.peak_median) for row in peaks.itertuples()}
    glm5 = peaks[peaks["model"] == "glm-5"]["ratio"].iloc[0]
    assert glm5 > 2.5  # the demo's x3 peak-hour model stands out
    assert len(at.get("vega_lite_chart")) == 2  # percentiles over time + weekday x hour heatmap
    assert "15:00-18:00 Asia/Shanghai" in texts(at)


def test_latency_heatmap_switches_between_china_and_local_time(seeded, monkeypatch, loopback):
    settings = seeded.settings
    use(monkeypatch, settings)
    at = open_app("en", "latency")
    zone = at.radio(key="heat_zone")
    assert zone.value == "cst"
    assert "Hour of day (CST (Asia/Shanghai))" in str(at.get("vega_lite_chart")[1].proto)
    zone.set_value("local").run()
    assert not at.exception
    assert "Hour of day (JST (Asia/Tokyo))" in str(at.get("vega_lite_chart")[1].proto)


def test_throttling_page_429_rates_equal_throttle_rates(seeded, monkeypatch, loopback):
    url, settings = seeded.url, seeded.settings
    use(monkeypatch, settings)
    at = open_app("en", "throttling")
    engine = make_engine(url)
    try:
        probe = analytics.throttle_rates(engine, RANGE, granularity=None, by=())
        real = analytics.throttle_rates(engine, RANGE, traffic="real", granularity=None, by=())
        codes = analytics.outcome_breakdown(engine, RANGE, granularity=None)
    finally:
        engine.dispose()
    values = metrics(at)
    assert values["429 rate (probes)"] == fmt.percent(probe["rate_429"].iloc[0])
    assert values["429 rate (real traffic: proxy)"] == fmt.percent(real["rate_429"].iloc[0])
    tables = [d.value for d in at.dataframe]
    probe_table = tables[0]
    assert list(probe_table["Code"]) == [c or fmt.MISSING for c in codes["error_code"]]
    assert {"1302", "1305"} <= set(probe_table["Code"])
    assert list(probe_table["Requests"]) == [fmt.number(n) for n in codes["requests"]]
    at.radio(key="thr_traffic").set_value("real").run()
    real_codes = at.dataframe[0].value
    assert set(real_codes["Source"]) == {"proxy"}
    assert "1302" in set(real_codes["Code"])


def test_costs_page_totals_rates_and_currency_switch(seeded, monkeypatch, loopback):
    url, settings = seeded.url, seeded.settings
    use(monkeypatch, settings)
    at = open_app("en", "costs")
    engine = make_engine(url)
    try:
        total = analytics.costs(engine, RANGE, period="total", by=()).iloc[0]
        detail = analytics.costs(engine, RANGE, period="day", by=("provider", "model", "app"))
    finally:
        engine.dispose()
    values = metrics(at)
    assert values["Total in range (JPY)"] == fmt.money(total["jpy"], "JPY")
    assert values["Cache hit ratio"] == fmt.percent(total["cache_hit_ratio"])
    assert values["Saved by caching (JPY)"] == fmt.money(total["cache_savings_jpy"], "JPY")
    assert "Exchange rates used: USDJPY 150 · CNYJPY 21 (defaults)" in texts(at)
    assert (total["usd_jpy"], total["cny_jpy"], total["fx_day"]) == (150, 21, None)
    assert len(at.dataframe[-1].value) == len(detail)
    assert at.get("download_button")[0].proto.label == "Download CSV"

    at.radio(key="currency").set_value("USD").run()
    assert metrics(at)["Total in range (USD)"] == fmt.money(total["usd"], "USD")
    at.radio(key="currency").set_value("CNY").run()
    assert metrics(at)["Total in range (CNY)"] == fmt.money(total["cny"], "CNY")
    assert metrics(at)["Total in range (CNY)"].startswith("CN¥")


def test_costs_name_the_dated_exchange_rates_used(tmp_path, monkeypatch, loopback):
    url = f"sqlite:///{tmp_path / 'fx.db'}"
    upgrade(url)
    settings = demo_settings("http://127.0.0.1:9", url)
    engine = make_engine(url)
    backfill(engine, settings, 2, now=AS_OF)
    store_rates(engine, date(2026, 3, 16), {"USD": Decimal("149.5"), "CNY": Decimal("20.7")}, "manual")
    refresh_rollups(engine, now=AS_OF)
    window = Filters(RANGE_END - timedelta(days=7), RANGE_END)
    total = analytics.costs(engine, window, period="total", by=()).iloc[0]
    engine.dispose()
    use(monkeypatch, settings)
    at = open_app("ja", "costs")
    caption = "使用した為替レート: USDJPY 149.5 · CNYJPY 20.7（2026-03-16 付のレートまで）"
    assert (total["usd_jpy"], total["cny_jpy"], str(total["fx_day"])) == (
        Decimal("149.5"),
        Decimal("20.7"),
        "2026-03-16",
    )
    assert caption in texts(at)
    assert metrics(at)["期間の合計 (JPY)"] == fmt.money(total["jpy"], "JPY")


def test_quota_page_shows_every_window_as_quota_statuses_computes_it(seeded, monkeypatch, loopback):
    url, settings = seeded.url, seeded.settings
    use(monkeypatch, settings)
    at = open_app("en", "quota")
    engine = make_engine(url)
    try:
        statuses = quota_statuses(engine, settings, now=AS_OF)
    finally:
        engine.dispose()
    assert len(statuses) >= 4
    used = [m.value for m in at.metric if m.label == "Used / limit"]
    assert used == [ui.quota_usage(q, "en") for q in statuses]
    gauges = [h.proto.body for h in at.get("html")]  # one ring per window, its percentage inside
    assert len(gauges) == len(statuses)
    for gauge, q in zip(gauges, statuses, strict=True):
        assert 'class="glm-gauge"' in gauge
        assert f">{fmt.percent(q.share, 0)}</div>" in gauge
    budget = next(q for q in statuses if q.kind == "monthly_budget")
    assert ui.quota_usage(budget, "en").endswith(f"/ ¥30,000 ({fmt.percent(budget.share)})")
    shown = texts(at)
    assert "Estimated" in shown
    for q in statuses:
        if q.resets_at is not None:
            assert f"({fmt.when(q.resets_at, ui.ZoneInfo('Asia/Tokyo'))})" in shown


def test_probes_page_lists_the_latest_results_and_filters_errors(seeded, monkeypatch, loopback):
    settings = seeded.settings
    use(monkeypatch, settings)
    at = open_app("en", "probes")
    table = at.dataframe[0].value
    assert len(table) == 500  # the newest 500 of a week of probes every 5 minutes
    assert table["Time"].iloc[0] >= table["Time"].iloc[-1]
    at.toggle(key="probe_errors_only").set_value(True).run()
    errors = at.dataframe[0].value
    assert 0 < len(errors) <= 500
    assert "OK" not in set(errors["Outcome"])
    assert set(errors["Code"]) & {"1302", "1305"}
    at.multiselect(key="probe_outcomes").set_value(["concurrency_limited"]).run()
    only = at.dataframe[0].value
    assert set(only["Outcome"]) == {"Concurrency limited"}
    assert set(only["Code"]) == {"1302"}


def test_filters_and_choices_are_kept_when_switching_pages(seeded, monkeypatch, loopback):
    settings = seeded.settings
    use(monkeypatch, settings)
    at = open_app("en", "costs")
    at.multiselect(key="f_providers").set_value(["zai"]).run()
    at.selectbox(key="f_range").set_value("24h").run()
    at.radio(key="currency").set_value("USD").run()
    at.switch_page("views/latency.py").run()
    assert at.multiselect(key="f_providers").value == ["zai"]
    assert at.selectbox(key="f_range").value == "24h"
    assert set(peak_table(at)) == {"zai / glm-4.7", "zai / glm-4.7-flash"}
    at.switch_page("views/overview.py").run()
    assert len(tile_texts(at)) == 2
    at.switch_page("views/costs.py").run()
    assert at.radio(key="currency").value == "USD"
    assert "Total in range (USD)" in metrics(at)


def test_language_switch_relabels_everything(seeded, monkeypatch, loopback):
    settings = seeded.settings
    use(monkeypatch, settings)
    at = open_app("ja")
    assert at.title[0].value == "概要"
    assert len(tile_texts(at)) == 4
    assert all("TTFT 中央値 **" in tile for tile in tile_texts(at))
    at.radio(key="lang").set_value("en").run()
    assert at.title[0].value == "Overview"
    assert all("Median TTFT **" in tile for tile in tile_texts(at))
    assert len(tile_texts(at)) == 4


def test_the_configured_language_is_the_default(seeded, monkeypatch, loopback):
    settings = seeded.settings
    use(monkeypatch, settings.model_copy(update={"language": "en"}))
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    assert at.title[0].value == "Overview"


def test_series_are_ranked_by_their_figure_then_by_name():
    values = pd.Series({"b": 2.0, "a": 2.0, "c": 5.0, "d": float("nan"), "e": 1.0})
    assert ui.ranked(values) == ["c", "a", "b", "e", "d"]
    assert ui.ranked(values, highest_first=False) == ["e", "a", "b", "c", "d"]


PICKER = """
import streamlit as st
from monitor.dashboard_cmd import import_dashboard

import_dashboard()
from monitor.dashboard import ui

ui.keep_state()
st.session_state.setdefault("lang", "en")
names = [f"series {i:02d}" for i in range({count})]
if st.session_state.get("reverse"):  # another figure ranks the series the other way round
    names.reverse()
names = [n for n in names if n not in st.session_state.get("gone", ())]  # other filters offer fewer
if not st.session_state.get("elsewhere"):  # on another page the picker is not drawn
    st.session_state["picked"] = ui.pick_series(names, "The slowest first.", "lat_series")
"""


def test_a_chart_draws_the_top_series_and_the_reader_picks_others():
    many = AppTest.from_string(PICKER.replace("{count}", "12"), default_timeout=60).run()
    assert not many.exception
    picker = many.multiselect[0]
    assert picker.label == "Series drawn"
    assert picker.options == [f"series {i:02d}" for i in range(12)]
    assert picker.value == [f"series {i:02d}" for i in range(ui.TOP_N)]
    assert many.session_state["picked"] == picker.value
    assert many.caption[0].value == f"{ui.TOP_N} of 12 series drawn. The slowest first."
    picker.set_value(["series 11", "series 10"]).run()
    assert many.session_state["picked"] == ["series 11", "series 10"]
    picker.set_value([]).run()
    assert many.info[0].value == i18n.t("common.no_series", "en")

    few = AppTest.from_string(PICKER.replace("{count}", str(ui.TOP_N)), default_timeout=60).run()
    assert not few.multiselect  # every series is drawn: nothing to pick
    assert few.session_state["picked"] == [f"series {i:02d}" for i in range(ui.TOP_N)]


def test_the_series_pick_follows_the_ranking_until_changed_then_is_kept_across_pages():
    at = AppTest.from_string(PICKER.replace("{count}", "12"), default_timeout=60).run()
    at.session_state["reverse"] = True
    at.run()
    assert at.multiselect[0].value == [f"series {i:02d}" for i in range(11, 11 - ui.TOP_N, -1)]

    at.multiselect[0].set_value(["series 03", "series 05"]).run()
    at.session_state["elsewhere"] = True  # another page, then back
    at.run()
    assert not at.multiselect
    at.session_state["elsewhere"] = False
    at.run()
    assert at.multiselect[0].value == ["series 03", "series 05"]
    at.session_state["reverse"] = False  # another ranking keeps the reader's pick
    at.run()
    assert at.session_state["picked"] == ["series 03", "series 05"]

    at.session_state["gone"] = ["series 05"]  # other filters: "series 05" is no longer offered
    at.run()
    assert at.session_state["picked"] == ["series 03"]
    at.session_state["gone"] = []
    at.run()
    assert at.session_state["picked"] == ["series 03"]

    at.multiselect[0].set_value(["series 10"]).run()
    at.session_state["gone"] = ["series 10"]  # nothing picked is offered: back to the ranking, and following it
    at.run()
    assert at.session_state["picked"] == [f"series {i:02d}" for i in range(ui.TOP_N)]
    at.session_state["reverse"] = True
    at.run()
    assert at.session_state["picked"] == ["series 11", *(f"series {i:02d}" for i in range(9, 9 - ui.TOP_N + 1, -1))]


# ---------------------------------------------------------------------------------------------------------
# Empty, missing and unreachable databases


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("page", ["overview", "costs", "probes"])
def test_an_empty_database_shows_how_to_get_data(tmp_path, monkeypatch, loopback, lang, page):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    upgrade(url)
    use(monkeypatch, settings_from_dict({"database": {"url": url}}))
    at = open_app(lang, page)
    assert not at.error
    assert [t.value for t in at.title] == [i18n.t("empty.title", lang)]
    assert "glm-monitor demo" in at.code[0].value
    assert "glm-monitor run" in at.code[0].value


def test_a_missing_database_file_is_not_created(tmp_path, monkeypatch, loopback):
    path = tmp_path / "nowhere" / "glm.db"
    use(monkeypatch, settings_from_dict({"database": {"url": f"sqlite:///{path}"}}))
    at = open_app("en")
    assert at.title[0].value == "No data yet"
    assert str(path) in texts(at)
    assert not path.exists()


def test_an_unmigrated_database_shows_how_to_get_data(tmp_path, monkeypatch, loopback):
    path = tmp_path / "blank.db"
    path.write_bytes(b"")
    use(monkeypatch, settings_from_dict({"database": {"url": f"sqlite:///{path}"}}))
    at = open_app("en")
    assert at.title[0].value == "No data yet"


def test_an_unreachable_database_is_named_without_its_password(monkeypatch, loopback):
    url = "postgresql://monitor:s3cret-pw@127.0.0.1:1/glm"
    use(monkeypatch, settings_from_dict({"database": {"url": url}}))
    at = open_app("en")
    assert at.title[0].value == "Cannot open the database"
    message = at.error[0].value
    assert "postgresql+psycopg://monitor:***@127.0.0.1:1/glm" in message
    assert "s3cret-pw" not in texts(at)


# ---------------------------------------------------------------------------------------------------------
# Password


def test_a_configured_password_is_asked_for_before_anything_is_shown(seeded, monkeypatch, loopback):
    settings = seeded.settings
    locked = settings.model_copy(
        update={"dashboard": settings.dashboard.model_copy(update={"password_env": "GLM_DASH_PW"})}
    )
    monkeypatch.setenv("GLM_DASH_PW", "correct horse ✓")
    use(monkeypatch, locked)
    at = AppTest.from_file(str(APP), default_timeout=120).run()
    assert at.title[0].value == i18n.t("auth.title", "ja")
    assert not at.metric
    at.text_input(key="auth_password").input("wrong")
    at.button[-1].click().run()
    assert at.error[0].value == i18n.t("auth.wrong", "ja")
    assert not at.metric
    at.text_input(key="auth_password").input("correct horse ✓")
    at.button[-1].click().run()
    assert not at.exception
    assert at.title[0].value == "概要"
    assert at.metric


def test_listening_beyond_loopback_without_a_password_shows_nothing(seeded, monkeypatch):
    settings = seeded.settings
    use(monkeypatch, settings)
    before = st_config.get_option("server.address")
    st_config.set_option("server.address", "0.0.0.0")
    try:
        at = AppTest.from_file(str(APP), default_timeout=120).run()
    finally:
        st_config.set_option("server.address", before)
    assert at.title[0].value == i18n.t("auth.title", "ja")
    assert "0.0.0.0" in at.error[0].value
    assert not at.metric and not at.dataframe


# ---------------------------------------------------------------------------------------------------------
# The message catalog


def test_both_languages_have_the_same_keys_and_placeholders():
    ja, en = i18n.MESSAGES["ja"], i18n.MESSAGES["en"]
    assert set(ja) == set(en)
    for key in ja:
        names = [{f for _, f, _, _ in string.Formatter().parse(text) if f} for text in (ja[key], en[key])]
        assert names[0] == names[1], key
        assert ja[key].strip() and en[key].strip(), key


def _literal_keys() -> set[str]:
    sections = {k.split(".")[0] for k in i18n.MESSAGES["en"]}
    pattern = re.compile(r"^(?:" + "|".join(sorted(sections)) + r")\.[a-z0-9_]+$")
    found = set()
    for file in [*DASHBOARD.glob("*.py"), *DASHBOARD.glob("views/*.py")]:
        tree = ast.parse(file.read_text(encoding="utf-8"))
        # pieces of f-strings (f"status.{name}") are prefixes, checked by the next test
        pieces = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
        for node in ast.walk(tree):
            literal = isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in pieces
            if literal and pattern.match(node.value):
                found.add(node.value)
    return found


def test_no_page_uses_a_missing_key():
    used = _literal_keys()
    assert len(used) > 150  # the scan sees the pages' keys
    assert sorted(k for k in used if not i18n.has(k)) == []


def test_keys_built_at_run_time_exist_for_every_value():
    families = {
        "status": ["healthy", "throttled", "down"],
        "outcome": [str(o) for o in Outcome],
        "range": [*ui.RANGES, ui.CUSTOM],
        "currency": ["JPY", "USD", "CNY"],
        "dim": ["provider", "model", "app", "vantage"],
        "granularity": ["auto", "hour", "day"],
        "metric": list(analytics.METRICS),
        "kind": ["free_tier", "coding_plan", "prepaid", "monthly_budget"],
        "page": list(PAGES),
        "source": ["probe", "proxy", "transport"],
    }
    missing = [f"{family}.{v}" for family, values in families.items() for v in values if not i18n.has(f"{family}.{v}")]
    missing += [k for k in ("quota.source_official", "quota.source_estimate") if not i18n.has(k)]
    assert missing == []


def test_an_unknown_key_falls_back_to_the_key_itself():
    assert i18n.t("nope.missing", "en") == "nope.missing"
    assert ui.outcome("brand_new_outcome") == "brand_new_outcome"


# ---------------------------------------------------------------------------------------------------------
# Formats


def test_money_is_written_for_the_reader():
    assert fmt.money(Decimal("1234.5"), "JPY") == "¥1,235"
    assert fmt.money(Decimal("1234.4999"), "JPY") == "¥1,234"
    assert fmt.money(Decimal("12.345"), "USD") == "$12.35"
    assert fmt.money(Decimal("0.004"), "USD") == "$0.00"
    assert fmt.money(Decimal("-0.004"), "USD") == "$0.00"
    assert fmt.money(Decimal("-1500"), "JPY") == "-¥1,500"
    assert fmt.money(Decimal("35.2031"), "CNY") == "CN¥35.20"
    assert fmt.money(float("nan"), "JPY") == fmt.MISSING
    assert fmt.money(None, "USD") == fmt.MISSING


def test_numbers_times_and_durations():
    assert fmt.ms(851.138) == "851 ms"
    assert fmt.ms(12345.6) == "12,346 ms"
    assert fmt.ms(None) == "—"
    assert fmt.per_second(56.79) == "56.8 tok/s"
    assert fmt.percent(0.142857) == "14.3%"
    assert fmt.percent(float("nan")) == "—"
    assert fmt.ratio(3.128417) == "×3.13"
    assert fmt.seconds(2.5) == "2.5 s"
    tokyo, shanghai = ui.ZoneInfo("Asia/Tokyo"), ui.ZoneInfo("Asia/Shanghai")
    assert fmt.when(AS_OF, tokyo) == "2026-03-18 18:30 JST"
    assert fmt.when(AS_OF, shanghai) == "2026-03-18 17:30 CST"
    assert fmt.zone_label(tokyo, AS_OF) == "JST (Asia/Tokyo)"
    assert fmt.duration(timedelta(hours=2, minutes=15, seconds=59), "ja") == "2時間15分"
    assert fmt.duration(timedelta(hours=2, minutes=15), "en") == "2 h 15 min"
    assert fmt.duration(timedelta(days=3, hours=4, minutes=5), "en") == "3 d 4 h"
    assert fmt.duration(timedelta(minutes=-5), "en") == "0 min"


def test_preset_ranges_are_whole_hours_ending_with_the_current_one():
    tokyo = ui.ZoneInfo("Asia/Tokyo")
    assert ui.time_range("7d", AS_OF, tokyo) == (RANGE.start, RANGE.end)
    start, end = ui.time_range("custom", AS_OF, tokyo, [datetime(2026, 3, 1).date(), datetime(2026, 3, 2).date()])
    assert (start, end) == (datetime(2026, 2, 28, 15, tzinfo=UTC), datetime(2026, 3, 2, 15, tzinfo=UTC))


# ---------------------------------------------------------------------------------------------------------
# The launcher


def test_loopback_addresses():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.9.10", "localhost", "::1", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.0.2.7", "dashboard.example", ""))


def test_listening_beyond_loopback_needs_a_password(tmp_path):
    exposed = settings_from_dict({"dashboard": {"host": "0.0.0.0", "password_env": "GLM_DASH_PW"}})
    no_secrets: list[Path] = []
    with pytest.raises(ConfigError, match=r"dashboard.host = '0.0.0.0'.*GLM_DASH_PW"):
        check_exposure(exposed, environ={}, secrets_files=no_secrets)
    with pytest.raises(ConfigError, match="GLM_DASH_PW"):
        check_exposure(exposed, environ={"GLM_DASH_PW": ""}, secrets_files=no_secrets)
    check_exposure(exposed, environ={"GLM_DASH_PW": "pw"}, secrets_files=no_secrets)
    unset = settings_from_dict({"dashboard": {"host": "0.0.0.0"}})
    with pytest.raises(ConfigError, match="password_env"):
        check_exposure(unset, environ={}, secrets_files=no_secrets)
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('password = "from-secrets"\n', encoding="utf-8")
    check_exposure(unset, environ={}, secrets_files=[secrets])
    check_exposure(settings_from_dict({}), environ={}, secrets_files=no_secrets)  # 127.0.0.1 by default
    check_exposure(unset, host="127.0.0.1", environ={}, secrets_files=no_secrets)


def test_launch_refuses_before_starting_anything(monkeypatch):
    monkeypatch.setenv("HOME", "/nonexistent")
    exposed = settings_from_dict({"dashboard": {"host": "0.0.0.0"}})
    with pytest.raises(ConfigError, match="needs a password"):
        launch(exposed, environ={}, stdout=subprocess.DEVNULL)


def test_the_command_is_headless_local_and_private():
    command = dashboard_command("127.0.0.1", 8501)
    assert command[:4] == [sys.executable, "-m", "monitor.dashboard_cmd", "run"]
    assert command[4] == str(APP)
    options = dict(zip(command[5::2], command[6::2], strict=True))
    assert options["--server.address"] == "127.0.0.1"
    assert options["--server.port"] == "8501"
    assert options["--server.headless"] == "true"
    assert options["--browser.gatherUsageStats"] == "false"


def test_settings_reach_the_app_intact(tmp_path):
    settings = demo_settings("http://127.0.0.1:9", "sqlite:///./relative.db")
    env = dashboard_environ(settings, as_of=AS_OF, base={"PATH": "/bin"})
    assert env["PATH"] == "/bin"
    assert env[AS_OF_ENV] == AS_OF.isoformat()
    back = settings_from_environ(env)
    assert back is not None
    assert back.plans == settings.plans
    assert back.targets == settings.targets
    assert back.database.url == f"sqlite:///{Path('relative.db').resolve()}"
    assert settings_from_environ({}) is None
    with pytest.raises(ConfigError, match=SETTINGS_ENV):
        settings_from_environ({SETTINGS_ENV: "{not json"})


def test_the_profile_caption_names_the_days_actually_drawn(seeded, monkeypatch, loopback):
    use(monkeypatch, seeded.settings)
    at = open_app("en", "latency")
    captions = [c.value for c in at.caption]
    assert any("The last 7 days of the range" in c for c in captions), captions  # the default 7-day range
    assert not any("The last 28 days" in c for c in captions)


def test_probe_times_have_seconds(seeded, monkeypatch, loopback):
    use(monkeypatch, seeded.settings)
    at = open_app("en", "probes")
    times = at.dataframe[0].value["Time"]
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} \S+", t) for t in times[:20])


def test_sources_are_named_in_the_readers_language(seeded, monkeypatch, loopback):
    use(monkeypatch, seeded.settings)
    at = open_app("ja", "throttling")
    tables = [d.value for d in at.dataframe if i18n.t("throttling.source", "ja") in d.value.columns]
    assert tables, "the breakdown table has a source column"
    shown = set(tables[0][i18n.t("throttling.source", "ja")])
    assert shown and shown <= {i18n.t(f"source.{s}", "ja") for s in ("probe", "proxy", "transport")}, shown
    assert not shown & {"probe", "proxy", "transport"}
