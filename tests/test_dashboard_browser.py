"""The dashboard in a real browser: the launcher starts it on a free port against a demo database, and headless
Chromium (Debian's package, driven by Playwright; no browser download) opens every page, finds what a reader
looks for, switches the language, downloads the cost CSV and saves a screenshot of each page.
"""

from __future__ import annotations

import io
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from monitor import analytics
from monitor.analytics import Filters
from monitor.dashboard_cmd import free_port, import_dashboard, launch, wait_until_ready
from monitor.demo import backfill, demo_settings
from monitor.quota import quota_statuses
from monitor.rollup import refresh_rollups
from monitor.store import make_engine, upgrade

import_dashboard()
from monitor.dashboard import format as fmt  # noqa: E402
from monitor.dashboard import i18n  # noqa: E402

# In CI (.ci/run installs chromium and playwright) a missing browser is a failure, not a skip.
if os.environ.get("CI") == "true":
    import playwright.sync_api as sync_api
else:
    sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() and os.environ.get("CI") != "true", reason="needs Debian's chromium: apt-get install chromium"
)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
AS_OF = datetime(2026, 3, 18, 9, 30, tzinfo=UTC)
RANGE_END = AS_OF.replace(minute=0) + timedelta(hours=1)
RANGE = Filters(RANGE_END - timedelta(days=7), RANGE_END)
FOOTER = ".st-key-page-footer"
TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Settings of a 3-day demo database ending at AS_OF, rolled up."""
    url = f"sqlite:///{tmp_path_factory.mktemp('browser') / 'demo.db'}"
    upgrade(url)
    settings = demo_settings("http://127.0.0.1:9", url).model_copy(update={"language": "en"})
    engine = make_engine(url)
    backfill(engine, settings, 3, now=AS_OF)
    refresh_rollups(engine, now=AS_OF)
    engine.dispose()
    return settings


@pytest.fixture(scope="module")
def server(demo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The dashboard started by the launcher on a free loopback port; yields its base URL."""
    log = tmp_path_factory.mktemp("streamlit") / "streamlit.log"
    port = free_port()
    with log.open("wb") as out:
        process = launch(demo, port=port, as_of=AS_OF, stdout=out, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until_ready(process, base, timeout_s=90)
            yield base
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert "Traceback" not in log.read_text(encoding="utf-8", errors="replace")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1100}, accept_downloads=True)
    try:
        yield context.new_page()
    finally:
        context.close()


# What each page draws; Streamlit loads an element kind's code on first use, so these can appear just after the
# footer (the script's last element): a page is read once all of them are there.
CONTENT = {
    "overview": ['[class*="st-key-tile-"]', '[data-testid="stMetricValue"]'],
    "latency": ['[data-testid="stVegaLiteChart"]', '[data-testid="stDataFrame"]'],
    "throttling": ['[data-testid="stMetricValue"]', '[data-testid="stVegaLiteChart"]', '[data-testid="stDataFrame"]'],
    "costs": [
        '[data-testid="stMetricValue"]',
        '[data-testid="stVegaLiteChart"]',
        '[data-testid="stDataFrame"]',
        '[data-testid="stDownloadButton"]',
    ],
    "quota": ['[data-testid="stMetricValue"]', ".glm-gauge"],
    "probes": ['[data-testid="stDataFrame"]'],
}


def visit(page, base: str, name: str) -> None:
    page.goto(base if name == "overview" else f"{base}/{name}")
    page.wait_for_selector(FOOTER, timeout=TIMEOUT_MS)
    for selector in CONTENT[name]:
        page.locator(selector).first.wait_for(timeout=TIMEOUT_MS)
    assert page.locator('[data-testid="stException"]').count() == 0


def metric_values(page) -> dict[str, str]:
    out = {}
    for metric in page.locator('[data-testid="stMetric"]').all():
        label = metric.locator('[data-testid="stMetricLabel"]').inner_text().strip()
        out[label] = metric.locator('[data-testid="stMetricValue"]').inner_text().strip()
    return out


def shot(page, folder: Path, name: str) -> None:
    path = folder / f"{name}.png"
    page.wait_for_timeout(500)  # charts draw after the script's last element arrives
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000


def test_overview_tiles_and_spend(server, page, demo, tmp_path):
    visit(page, server, "overview")
    assert page.locator("h1").first.inner_text().strip() == "Overview"
    tiles = page.locator('[class*="st-key-tile-"]')
    assert tiles.count() == 4
    engine = make_engine(demo.database.url)
    try:
        forecast = analytics.spend_forecast(engine, RANGE, now=AS_OF, currency="JPY")
        targets = analytics.health(engine, now=AS_OF)
    finally:
        engine.dispose()
    glm5 = next(h for h in targets if (h.provider, h.model) == ("bigmodel", "glm-5"))
    tile = page.locator(".st-key-tile-bigmodel-glm-5")
    tile.get_by_text("Median TTFT", exact=False).wait_for(timeout=TIMEOUT_MS)
    text = " ".join(tile.inner_text().split())
    assert text.count("Median TTFT") == 1
    assert f"Median TTFT {fmt.ms(glm5.median_ttft_ms)}" in text
    assert f"429 rate {fmt.percent(glm5.rate_429)}" in text
    shown = metric_values(page)
    assert shown["Month to date (JPY)"] == fmt.money(forecast.month_to_date, "JPY")
    shot(page, tmp_path, "overview")


def test_latency_charts_and_peak_ratios(server, page, demo, tmp_path):
    visit(page, server, "latency")
    charts = page.locator('[data-testid="stVegaLiteChart"]')
    charts.nth(1).wait_for(timeout=TIMEOUT_MS)
    assert charts.count() == 2
    engine = make_engine(demo.database.url)
    try:
        peaks = analytics.peak_slowdown(engine, RANGE.tail(analytics.PEAK_SPAN))
    finally:
        engine.dispose()
    # The peak table is the first data grid; its cells are also in the page as a (hidden) accessible table.
    grid = page.locator('[data-testid="stDataFrame"]').first
    grid.locator('[data-testid="glide-cell-1-0"]').wait_for(state="attached", timeout=TIMEOUT_MS)

    def cell(column: int, row: int) -> str:
        return (grid.locator(f'[data-testid="glide-cell-{column}-{row}"]').text_content() or "").strip()

    shown = {cell(0, row): cell(1, row) for row in range(len(peaks))}
    assert grid.locator(f'[data-testid="glide-cell-0-{len(peaks)}"]').count() == 0  # every row, no more
    assert shown == {f"{r.provider} / {r.model}": fmt.ratio(r.ratio) for r in peaks.itertuples()}
    ratio = shown["bigmodel / glm-5"]
    assert ratio.startswith("×") and float(ratio[1:]) > 2
    assert page.get_by_text("15:00-18:00 Asia/Shanghai", exact=False).count() >= 1
    shot(page, tmp_path, "latency")


def test_throttling_tabs_and_codes(server, page, tmp_path):
    visit(page, server, "throttling")
    assert "429 rate (probes)" in metric_values(page)
    assert page.get_by_text("1305 Overloaded").count() >= 1  # the code breakdown's axis
    page.locator(".st-key-thr_traffic").get_by_text("Real traffic").click()
    page.get_by_text("Real traffic is what the HTTP transport").wait_for(timeout=TIMEOUT_MS)
    shot(page, tmp_path, "throttling")


def test_costs_rates_and_csv_download(server, page, demo, tmp_path):
    visit(page, server, "costs")
    assert page.locator(".st-key-fx-rates").inner_text().startswith("Exchange rates used: ")
    assert "USDJPY 150" in page.locator(".st-key-fx-rates").inner_text()
    page.locator(".st-key-currency").get_by_text("Dollars (USD)").click()
    page.get_by_text("Total in range (USD)").wait_for(timeout=TIMEOUT_MS)
    with page.expect_download(timeout=TIMEOUT_MS) as download:
        page.locator(".st-key-costs-csv button").click()
    saved = tmp_path / "costs.csv"
    download.value.save_as(saved)
    csv = pd.read_csv(io.BytesIO(saved.read_bytes()), encoding="utf-8-sig", dtype=str, keep_default_na=False)
    engine = make_engine(demo.database.url)
    try:
        detail = analytics.costs(engine, RANGE, period="day", by=("provider", "model", "app"))
    finally:
        engine.dispose()
    assert len(csv) == len(detail)
    assert list(csv.columns) == list(detail.columns)
    assert [str(v) for v in detail["jpy"]] == list(csv["jpy"])
    shot(page, tmp_path, "costs")


def test_quota_gauges(server, page, demo, tmp_path):
    visit(page, server, "quota")
    engine = make_engine(demo.database.url)
    try:
        statuses = quota_statuses(engine, demo, now=AS_OF)
    finally:
        engine.dispose()
    assert page.locator('[class*="st-key-quota-"]').count() == len(statuses)
    gauges = page.locator('[class*="st-key-quota-"] .glm-gauge')
    gauges.nth(len(statuses) - 1).wait_for(timeout=TIMEOUT_MS)
    assert [g.inner_text().strip() for g in gauges.all()] == [fmt.percent(q.share, 0) for q in statuses]
    budget = page.locator(".st-key-quota-team-budget-month")
    budget.locator('[data-testid="stMetricValue"]').wait_for(timeout=TIMEOUT_MS)
    assert budget.inner_text().count("¥30,000") == 1
    shot(page, tmp_path, "quota")


def test_probes_table_and_error_filter(server, page, tmp_path):
    visit(page, server, "probes")
    assert page.locator('[data-testid="stDataFrame"]').count() == 1
    page.locator(".st-key-probe_errors_only label").click()
    page.get_by_text("Newest").first.wait_for(timeout=TIMEOUT_MS)
    shot(page, tmp_path, "probes")


def test_language_switch_and_page_change_keep_the_selection(server, page):
    visit(page, server, "costs")
    page.locator(".st-key-lang").get_by_text("日本語").click()
    page.get_by_role("heading", name="コスト").wait_for(timeout=TIMEOUT_MS)
    page.locator('[data-testid="stSidebarNav"]').get_by_text("レイテンシ").click()
    page.get_by_role("heading", name="レイテンシ").wait_for(timeout=TIMEOUT_MS)
    assert page.locator(".st-key-lang input[type=radio]").nth(0).is_checked()


@pytest.mark.parametrize("lang", ["en", "ja"])
@pytest.mark.parametrize("name", list(CONTENT))
def test_no_chart_text_is_cut_off(server, page, name, lang):
    """Vega shortens a legend label, axis label or title that passes its limit with an ellipsis: none may be, in
    either language."""
    visit(page, server, name)
    if lang == "ja":
        page.locator(".st-key-lang").get_by_text("日本語").click()
        page.get_by_role("heading", name=i18n.t(f"{name}.title", "ja")).wait_for(timeout=TIMEOUT_MS)
        for selector in CONTENT[name]:
            page.locator(selector).first.wait_for(timeout=TIMEOUT_MS)
    page.wait_for_timeout(800)  # charts draw after the script's last element arrives
    texts = page.locator('[data-testid="stVegaLiteChart"] svg text').all_text_contents()
    cut = [t for t in texts if t.endswith("…")]
    assert cut == [], cut
