"""Dashboard page load times in a real browser, and the README screenshots.

Timing (default): for each page, fresh dashboard processes (empty data caches) are started with the launcher
and headless Chromium (Debian's /usr/bin/chromium, no browser download) navigates its open tab to the page, a new
document and so a new Streamlit session (``--new-tab``: a new tab per load, see ``Tabs``); "cold" is the time
from navigation until the page is drawn (its footer and main content are there, and its last change before a
second of quiet, as the page itself notes it: see ``load``), median of ``--cold-runs`` fresh processes (the
slowest is shown too).
"warm" is the same page opened again in the same process (figures cached), median of ``--runs``.
The browser keeps Streamlit's scripts cached (as a returning reader's does); a one-line Streamlit app measured
the same way gives the floor. Goal: cold <= 2 s.

    python bench/dashboard.py --database-url postgresql://postgres@127.0.0.1:5432/bench10m --as-of auto
    python bench/dashboard.py                      # on a fresh 7-day demo database
    python bench/dashboard.py --screenshots docs/  # README screenshots (English and Japanese)

``--as-of`` freezes the dashboard's "now" (``auto``: the end of the newest rolled-up hour), so a database
built earlier shows its data in the default range (last 7 days).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from monitor.config import Settings
from monitor.dashboard_cmd import free_port, launch, wait_until_ready
from monitor.store import describe_url

CHROMIUM = "/usr/bin/chromium"
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
PAGES = ("overview", "latency", "throttling", "costs", "quota", "probes")
FOOTER = ".st-key-page-footer"
# The main content of each page: Streamlit loads an element kind's code on first use, so it can appear just
# after the footer; a page counts as drawn when both are there.
CONTENT = {
    "overview": '[data-testid="stMetricValue"]',
    "latency": '[data-testid="stVegaLiteChart"]',
    "throttling": '[data-testid="stDataFrame"]',
    "costs": '[data-testid="stDataFrame"]',
    "quota": ".glm-gauge",  # the gauges are drawn with CSS (dashboard/views/quota.py)
    "probes": '[data-testid="stDataFrame"]',
}
SERVER_TIME = re.compile(r"([0-9.]+) (?:s|秒)\s*$")


def page_url(base: str, page: str) -> str:
    """The URL of a page (the overview is the default page, served at the root)."""
    return base if page == "overview" else f"{base}/{page}"


def demo_database(folder: Path, days: float) -> str:
    """A fresh SQLite demo database with ``days`` of backfilled history, rolled up."""
    from monitor.demo import backfill, demo_settings
    from monitor.rollup import refresh_rollups
    from monitor.store import make_engine, upgrade

    url = f"sqlite:///{folder / 'demo.db'}"
    upgrade(url)
    engine = make_engine(url)
    now = datetime.now(UTC)
    print(f"building a {days:g}-day demo database ...", flush=True)
    backfill(engine, demo_settings("http://127.0.0.1:9", url), days, now=now)
    refresh_rollups(engine, now=now)
    engine.dispose()
    return url


def newest_hour(url: str) -> datetime:
    """The end of the newest rolled-up probe hour (for ``--as-of auto``)."""
    from monitor.analytics import Filters, throttle_rates
    from monitor.store import make_engine

    engine = make_engine(url)
    try:
        rates = throttle_rates(
            engine, Filters(datetime(2000, 1, 1, tzinfo=UTC), datetime.now(UTC) + timedelta(days=366)), by=()
        )
    finally:
        engine.dispose()
    if rates.empty:
        return datetime.now(UTC)
    last: datetime = rates["period"].max().to_pydatetime()
    return last.astimezone(UTC) + timedelta(minutes=59)


def settings_for(url: str, lang: str) -> Settings:
    """The demo's settings (its plans give the quota page something to show) on ``url``."""
    from monitor.demo import demo_settings

    return demo_settings("http://127.0.0.1:9", url).model_copy(update={"language": lang})


@contextmanager
def dashboard(settings: Settings, as_of: datetime | None, log: Path, port: int | None = None) -> Iterator[str]:
    """A running dashboard (on ``port``, default a free one); yields its base URL and stops it afterwards."""
    port = port or free_port()
    with log.open("ab") as out:
        process = launch(settings, port=port, as_of=as_of, stdout=out, stderr=out)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until_ready(process, base)
            yield base
        finally:
            process.terminate()
            process.wait(timeout=20)


@contextmanager
def baseline_app(folder: Path, port: int, log: Path) -> Iterator[str]:
    """A one-line Streamlit app with the same footer: the floor of any page load on this machine."""
    app = folder / "baseline.py"
    app.write_text(
        'import streamlit as st\nst.title("baseline")\nwith st.container(key="page-footer"):\n    st.caption("end")\n'
    )
    command = [sys.executable, "-m", "streamlit", "run", str(app), "--server.address", "127.0.0.1"]
    command += ["--server.port", str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=out)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until_ready(process, base)
            yield base
        finally:
            process.terminate()
            process.wait(timeout=20)


@contextmanager
def browser() -> Iterator[object]:
    """Headless Chromium from the Debian package."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Tabs:
    """Where each load happens: by default one open tab, navigated to each page as a reader opening a bookmark
    does (every navigation is a new document, so a new Streamlit session); with ``new_tab`` a new tab per load.

    Headless Chromium 156 opens every new tab in a new window and starts that window's own interface renderer
    (``--top-chrome-webui``: ~0.7 s of script per tab in a trace, on this 2-core machine beside the page's
    renderer and the dashboard server); a reader's browser has that once per window, not per page view, so it is
    not the default here.
    """

    def __init__(self, context: object, *, new_tab: bool = False) -> None:
        self.context = context
        self.new_tab = new_tab
        self._page: object | None = None

    def open(self) -> object:
        """A tab showing nothing, ready to navigate."""
        if self.new_tab:
            return self.context.new_page()
        if self._page is None:
            self._page = self.context.new_page()
        self._page.goto("about:blank")  # leave the previous page (its session ends) before timing the next
        return self._page

    def done(self, page: object) -> None:
        """Close a tab opened for one load."""
        if self.new_tab:
            page.close()


# Installed in every document before its own scripts: notes (epoch ms) the first frame in which each watched
# selector matches, and the frame after the page's latest change. Playwright's waits poll (0, 20, 50, 100, 100,
# then every 500 ms), so the moment a wait returns can be up to 0.5 s after the element was drawn; the page's own
# notes are exact.
WATCH_SCRIPT = """
(() => {
  const seen = (window.__glmSeen = {});
  const watched = %s;
  window.__glmLast = 0;
  // What a canvas holds is never drawn (the data grid keeps an accessible copy of its cells there).
  const drawn = (m) => {
    const e = m.target.nodeType === 1 ? m.target : m.target.parentElement;
    if (!e) return true;
    if (m.type === "childList" && e.tagName === "CANVAS") return false;
    return !(e.parentElement && e.parentElement.closest("canvas"));
  };
  const check = (records) => {
    if (records.some(drawn)) {
      requestAnimationFrame(() => { window.__glmLast = performance.timeOrigin + performance.now(); });
    }
    for (const selector of watched) {
      if (!(selector in seen) && document.querySelector(selector)) {
        seen[selector] = null;
        requestAnimationFrame(() => { seen[selector] = performance.timeOrigin + performance.now(); });
      }
    }
  };
  new MutationObserver(check).observe(document, { childList: true, subtree: true, attributes: true });
})();
"""
QUIET_MS = 1000
"""A page is drawn once its footer and main content are there and nothing has changed for this long: Streamlit
loads an element kind's code on first use and Vega draws after the element mounts, so tables and charts can
appear after the footer; the load ends at the last change."""


def watch(context: object) -> None:
    """Make every page of ``context`` note when the footer and each page's main content are first drawn, and
    when it last changed."""
    selectors = [FOOTER, *sorted(set(CONTENT.values()))]
    context.add_init_script(WATCH_SCRIPT % json.dumps(selectors))


def load(tabs: Tabs, url: str, content: str | None = None, *, timeout_s: float = 120) -> tuple[float, float]:
    """(seconds from navigation, in a new document and so a new Streamlit session, until the page is drawn: its
    footer and ``content`` are there and the last change before ``QUIET_MS`` of quiet is drawn, as the page notes
    it (``WATCH_SCRIPT``); seconds the server spent on the run, as the footer reports it)."""
    page = tabs.open()
    try:
        wanted = [FOOTER, content] if content else [FOOTER]
        started = time.time()
        page.goto(url)
        page.wait_for_function(
            "wanted => wanted.every(s => window.__glmSeen && window.__glmSeen[s])", arg=wanted, timeout=timeout_s * 1000
        )
        page.wait_for_function(
            "quiet => performance.timeOrigin + performance.now() - window.__glmLast >= quiet",
            arg=QUIET_MS,
            timeout=timeout_s * 1000,
        )
        drawn_ms = page.evaluate("() => window.__glmLast")
        took = drawn_ms / 1000 - started
        found = SERVER_TIME.search(page.inner_text(FOOTER))
        return took, float(found.group(1)) if found else float("nan")
    finally:
        tabs.done(page)


def median_load(tabs: Tabs, url: str, runs: int, content: str | None = None) -> tuple[float, float]:
    """Median browser and server times of ``runs`` loads."""
    loads = [load(tabs, url, content) for _ in range(runs)]
    return statistics.median(b for b, _ in loads), statistics.median(s for _, s in loads)


def bench(
    settings: Settings,
    as_of: datetime | None,
    runs: int,
    cold_runs: int,
    folder: Path,
    log: Path,
    *,
    new_tab: bool = False,
    pages: tuple[str, ...] = PAGES,
) -> None:
    """Cold (median of ``cold_runs`` fresh servers) and warm (median of ``runs``) load times of every page, as a
    table, with the baseline of a one-line app."""
    port = free_port()  # one origin for every server, so the browser keeps Streamlit's scripts cached
    rows = []
    with browser() as chromium:
        context = chromium.new_context(viewport={"width": 1400, "height": 1000})
        watch(context)
        tabs = Tabs(context, new_tab=new_tab)
        with baseline_app(folder, port, log) as base:
            load(tabs, base)  # fills the browser's cache with Streamlit's own scripts
            floor, _ = median_load(tabs, base, max(runs, 3))
        print(f"  baseline (one-line Streamlit app): {floor:.2f} s", flush=True)
        for name in pages:
            colds: list[tuple[float, float]] = []
            for i in range(cold_runs):
                with dashboard(settings, as_of, log, port) as base:
                    colds.append(load(tabs, page_url(base, name), CONTENT[name]))
                    if i == cold_runs - 1:
                        warm, warm_server = median_load(tabs, page_url(base, name), runs, CONTENT[name])
            cold = statistics.median(b for b, _ in colds)
            cold_server = statistics.median(s for _, s in colds)
            worst = max(b for b, _ in colds)
            rows.append((name, cold, worst, cold_server, warm, warm_server))
            each = ", ".join(f"{b:.2f}" for b, _ in colds)
            print(f"  {name}: cold {each} s (server {cold_server:.2f}), warm {warm:.2f} s", flush=True)
        context.close()
    print()
    print(f"{'page':<12} {'cold s':>8} {'max':>8} {'server':>8} {'warm s':>8} {'server':>8}")
    print(f"{'(baseline)':<12} {floor:>8.2f} {'':>8} {'':>8} {floor:>8.2f}")
    for name, cold, worst, cold_server, warm, warm_server in rows:
        print(f"{name:<12} {cold:>8.2f} {worst:>8.2f} {cold_server:>8.2f} {warm:>8.2f} {warm_server:>8.2f}")
    slowest = max(row[1] for row in rows)
    print(
        f"\nslowest cold load (median of {cold_runs} fresh servers): {slowest:.2f} s (goal <= 2 s): "
        f"{'met' if slowest <= 2 else 'NOT met'}"
    )
    print("(server: seconds the dashboard spent on the run, as its footer reports; the rest is the browser)")


def screenshots(settings: Settings, as_of: datetime | None, folder: Path, langs: list[str], log: Path) -> None:
    """A full-height PNG of every page per language: ``dashboard-<page>[-ja].png``."""
    folder.mkdir(parents=True, exist_ok=True)
    with browser() as chromium:
        for lang in langs:
            with dashboard(settings.model_copy(update={"language": lang}), as_of, log) as base:
                context = chromium.new_context(viewport={"width": 1400, "height": 900}, device_scale_factor=1)
                page = context.new_page()
                for name in PAGES:
                    page.set_viewport_size({"width": 1400, "height": 900})
                    page.goto(page_url(base, name))
                    page.wait_for_selector(FOOTER, timeout=120_000)
                    page.wait_for_selector(CONTENT[name], timeout=120_000)
                    page.wait_for_timeout(1500)  # charts draw after the script ends
                    # The main area scrolls inside the page: grow the window to its full height instead.
                    height = page.evaluate(
                        'Math.max(...[...document.querySelectorAll(\'[data-testid="stMain"], '
                        '[data-testid="stMainBlockContainer"]\')].map(e => e.scrollHeight), 900)'
                    )
                    page.set_viewport_size({"width": 1400, "height": int(height) + 40})
                    page.wait_for_timeout(800)
                    suffix = "" if lang == "en" else f"-{lang}"
                    path = folder / f"dashboard-{name}{suffix}.png"
                    page.screenshot(path=str(path))
                    print(f"  {path}", flush=True)
                context.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="database to read (default: build a 7-day demo database)")
    parser.add_argument("--as-of", help="ISO time the dashboard treats as now, or 'auto' (newest rolled-up hour)")
    parser.add_argument("--runs", type=int, default=3, help="warm loads per page (median shown)")
    parser.add_argument("--cold-runs", type=int, default=3, help="fresh servers per page for cold loads (median)")
    parser.add_argument("--days", type=float, default=7, help="history of the demo database (default 7)")
    parser.add_argument("--pages", default=",".join(PAGES), help="pages to time, comma-separated (default: all)")
    parser.add_argument("--new-tab", action="store_true", help="a new tab (a new headless window) for every load")
    parser.add_argument("--lang", default="en", help="dashboard language for timing (ja or en)")
    parser.add_argument("--screenshots", metavar="DIR", help="save README screenshots here instead of timing")
    parser.add_argument("--screenshot-langs", default="en,ja", help="languages of the screenshots (default en,ja)")
    args = parser.parse_args(argv)
    unknown = set(args.pages.split(",")) - set(PAGES)
    if unknown:
        parser.error(f"--pages: no page named {', '.join(sorted(unknown))} (pages: {', '.join(PAGES)})")
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} not found: apt-get install chromium", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or demo_database(Path(tmp), args.days)
        as_of = None
        if args.as_of == "auto":
            as_of = newest_hour(url)
        elif args.as_of:
            as_of = datetime.fromisoformat(args.as_of)
            as_of = as_of if as_of.tzinfo else as_of.replace(tzinfo=UTC)
        log = Path(tmp) / "streamlit.log"
        settings = settings_for(url, args.lang)
        print(f"database: {describe_url(url)}; as of: {as_of or 'now'}", flush=True)
        if args.screenshots:
            screenshots(settings, as_of, Path(args.screenshots), args.screenshot_langs.split(","), log)
        else:
            print(
                f"headless Chromium, browser cache warm, {'a new tab' if args.new_tab else 'one tab'} per load: "
                "navigation -> the page's last drawn change; "
                "cold = first view after a fresh server start (empty data caches)"
            )
            bench(
                settings,
                as_of,
                args.runs,
                args.cold_runs,
                Path(tmp),
                log,
                new_tab=args.new_tab,
                pages=tuple(args.pages.split(",")),
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
