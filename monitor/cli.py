"""The ``glm-monitor`` command line.

Exit codes: 0 success, 1 a runtime failure (database, network), 2 bad input (config file, arguments),
130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from monitor import __version__
from monitor.errors import ConfigError, MonitorError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from monitor.config import Settings
    from monitor.events import ProbeResult
    from monitor.status import StatusReport
    from monitor.writer import EventWriter

console = Console()
err_console = Console(stderr=True)

Handler = Callable[[argparse.Namespace], int]


def _settings(args: argparse.Namespace, *, demo_fallback: bool = True) -> Settings:
    """The config file's settings (with no config file, the demo's, unless not ``demo_fallback``), with
    ``--database-url`` (given before or after the command) applied."""
    # Imported here so `glm-monitor --help` stays fast.
    from monitor.config import load_settings

    settings = load_settings(args.config, demo_fallback=demo_fallback)
    url = getattr(args, "database_url", None)
    if url:
        settings = settings.model_copy(update={"database": settings.database.model_copy(update={"url": url})})
    return settings


def _database_url(args: argparse.Namespace) -> str:
    url: str = getattr(args, "database_url", None) or _settings(args).database.url
    return url


def cmd_run(args: argparse.Namespace) -> int:
    """Migrate the database, then run the prober daemon until SIGTERM or SIGINT.

    With no targets configured it runs the demo instead: the built-in simulator, probed into its own file.
    """
    from monitor.config import require_api_keys

    settings = _settings(args, demo_fallback=False)
    if not settings.targets:
        console.print(
            "no targets configured: probing the built-in simulated provider instead (demo data, kept in "
            "./glm-monitor-demo.db). Add [[targets]] and API keys to probe real providers "
            "(see glm-monitor.example.toml).",
            markup=False,  # [[targets]] is TOML, not a Rich style
        )
        return _demo(backfill_days=None, interval_s=15.0, sim_port=0, database_url=None, dashboard=args.dashboard)
    require_api_keys(settings)
    return _run_daemon(settings, None, dashboard=args.dashboard)


def _run_daemon(
    settings: Settings,
    environ: dict[str, str] | None,
    *,
    backfill_days: float | None = None,
    dashboard: bool = True,
) -> int:
    """Migrate, optionally backfill, start the dashboard, then probe until signalled; flush before returning."""
    from monitor.daemon import Daemon
    from monitor.store import describe_url, make_engine, upgrade_or_defer

    prepare = upgrade_or_defer(settings.database.url)
    engine = make_engine(settings.database.url)
    if backfill_days:
        from monitor.demo import backfill

        if prepare is not None:
            prepare()  # a backfill writes straight into the database: it must be there

        console.print(f"backfilling {backfill_days:g} days of simulated history ...")
        console.print(f"  {backfill(engine, settings, backfill_days)} events written")
    writer = _writer_for(settings, engine, prepare)
    daemon = Daemon(settings, engine, writer, environ=environ)
    console.print(f"database: {describe_url(settings.database.url)}; vantage: {settings.vantage}")
    for line in daemon.describe_schedule():
        console.print(f"probing {line}", highlight=False)
    board = _start_dashboard(settings) if dashboard else None
    try:
        asyncio.run(_until_signalled(daemon.run))
    finally:
        writer.close()
        engine.dispose()
        if board is not None:
            board.terminate()
            board.wait(10)
    console.print(f"stopped after {daemon.probes_done} probes; every result is stored")
    return 0


def _writer_for(settings: Settings, engine: Engine, prepare: Callable[[], None] | None) -> EventWriter:
    """The started writer of ``[database]`` (its journal and queue bound), running ``prepare`` before it writes."""
    from monitor.writer import writer_for

    return writer_for(engine, settings.database, prepare)


def _start_dashboard(settings: Settings) -> subprocess.Popen[bytes] | None:
    """The dashboard beside the daemon; a dashboard that cannot start is reported, never fatal for probing."""
    from monitor.dashboard_cmd import check_exposure, launch

    try:
        check_exposure(settings)
        process = launch(settings, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except (MonitorError, OSError) as exc:
        err_console.print(f"[yellow]dashboard not started:[/] {escape(str(exc))}")
        return None
    host = settings.dashboard.host
    console.print(f"dashboard: http://{host}:{settings.dashboard.port}", highlight=False)
    return process


def cmd_demo(args: argparse.Namespace) -> int:
    """Simulator + daemon (+ backfilled history) for a first look without any API key."""
    from monitor.demo import parse_days

    days = parse_days(args.backfill) if args.backfill else None
    return _demo(
        backfill_days=days,
        interval_s=args.interval,
        sim_port=args.sim_port,
        database_url=getattr(args, "database_url", None),
        dashboard=args.dashboard,
        dashboard_port=args.dashboard_port,
    )


def _demo(
    *,
    backfill_days: float | None,
    interval_s: float,
    sim_port: int,
    database_url: str | None,
    dashboard: bool = True,
    dashboard_port: int | None = None,
) -> int:
    from monitor import demo

    env = demo.start(
        database_url or demo.DEMO_DATABASE_URL, sim_port=sim_port, interval_s=interval_s, dashboard_port=dashboard_port
    )
    try:
        console.print(f"simulated GLM provider: {env.sim.base_url} (openai /api/paas/v4, anthropic /api/anthropic)")
        for provider, model, what in demo.DEMO_TARGETS:
            console.print(f"  {provider}/{model}: {what}", highlight=False)
        if env.config_file is not None:
            console.print(
                f"wrote {env.config_file}: status, dashboard and proxy started in this folder use the demo "
                "(its database, plans and simulated providers)",
                highlight=False,
            )
        console.print("Ctrl-C stops everything.")
        return _run_daemon(env.settings, env.environ, backfill_days=backfill_days, dashboard=dashboard)
    finally:
        env.sim.stop()


async def _until_signalled(main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``main(stop)``; SIGTERM and SIGINT set ``stop`` so it can wind down cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await main(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def cmd_probe(args: argparse.Namespace) -> int:
    """Probe every configured target once; print a table (or JSON). Exit 0 only when every target is ok."""
    from monitor.config import require_api_keys
    from monitor.daemon import Daemon
    from monitor.outcomes import Outcome
    from monitor.store import make_engine, upgrade
    from monitor.writer import EventWriter

    settings = _settings(args)
    if not settings.targets:
        err_console.print(
            "no targets configured: add [[targets]] to your config (see glm-monitor.example.toml)", markup=False
        )
        return 2
    require_api_keys(settings)
    if args.store:
        upgrade(settings.database.url)
    engine = make_engine(settings.database.url)
    writer = EventWriter(engine)
    if args.store:
        writer.start()
    daemon = Daemon(settings, engine, writer)

    async def probe_all() -> list[ProbeResult]:
        return list(await asyncio.gather(*(daemon.probe_once(st) for st in daemon.targets)))

    try:
        results = asyncio.run(probe_all())
    finally:
        writer.close()
        engine.dispose()
    if args.json:
        print(json.dumps([_probe_json(r) for r in results], indent=2))
    else:
        _probe_table(results)
    return 0 if all(r.outcome == Outcome.OK for r in results) else 1


def _probe_json(r: ProbeResult) -> dict[str, object]:
    return {
        "provider": r.provider,
        "model": r.model,
        "vantage": r.vantage,
        "ts": r.ts.isoformat(),
        "outcome": str(r.outcome),
        "http_status": r.http_status,
        "error_code": r.error_code,
        "error_message": r.error_message,
        "retry_after_s": r.retry_after_s,
        "connect_ms": r.connect_ms,
        "ttft_ms": r.ttft_ms,
        "total_ms": r.total_ms,
        "tokens_per_s": r.tokens_per_s,
        "input_tokens": r.usage.input_tokens,
        "cached_input_tokens": r.usage.cached_input_tokens,
        "output_tokens": r.usage.output_tokens,
        "reasoning_tokens": r.usage.reasoning_tokens,
        "complete": r.usage.complete,
        "cost": None if r.cost is None else {"amount": str(r.cost.amount), "currency": r.cost.currency},
        "price_source": r.price_source,
    }


def _probe_table(results: list[ProbeResult]) -> None:
    table = Table(title="Probe results")
    for col in ("target", "outcome", "HTTP", "code"):
        table.add_column(col, no_wrap=True)
    for col in ("TTFT ms", "total ms", "tok/s", "cost"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("message")

    def num(v: float | None, fmt: str = "{:.0f}") -> str:
        return "" if v is None else fmt.format(v)

    for r in results:
        style = "green" if r.outcome == "ok" else "yellow" if r.outcome.throttled else "red"
        table.add_row(
            f"{r.provider}/{r.model}",
            f"[{style}]{r.outcome}[/]",
            num(r.http_status, "{}"),
            r.error_code or "",
            num(r.ttft_ms),
            num(r.total_ms),
            num(r.tokens_per_s, "{:.1f}"),
            "" if r.cost is None else f"{r.cost.currency} {r.cost.amount.normalize():f}",
            escape(r.error_message or ""),
        )
    out = console if console.is_terminal else Console(width=200)
    out.print(table)


def cmd_proxy(args: argparse.Namespace) -> int:
    """Run the recording reverse proxy until interrupted; every request is stored as a usage event."""
    from monitor.capture.proxy import proxy_token, serve
    from monitor.store import describe_url, make_engine, upgrade_or_defer

    settings = _settings(args)
    host = args.host or settings.proxy.host
    port = args.port or settings.proxy.port
    token = proxy_token(settings, host)  # refuses an exposed proxy without one, before anything starts
    prepare = upgrade_or_defer(settings.database.url)
    engine = make_engine(settings.database.url)
    catalog = settings.catalog()
    console.print(f"recording proxy on http://{host}:{port}; database {describe_url(settings.database.url)}")
    if token:
        console.print(
            f"clients must send the token from ${settings.proxy.token_env} as X-Monitor-Token", highlight=False
        )
    for provider in catalog.values():
        for ep in provider.endpoints:
            console.print(
                f"  http://{host}:{port}/{ep.route}/... -> {ep.base_url}/...", highlight=False, soft_wrap=True
            )
    writer = _writer_for(settings, engine, prepare)
    if prepare is not None:
        err_console.print("the database is unreachable: recording to the journal until it is back (then migrating it)")
    console.print(f"journal: {writer.journal.directory if writer.journal else '-'}", highlight=False)
    try:
        serve(settings, writer, host, port)
    finally:
        writer.close()
        engine.dispose()
    console.print("proxy stopped; every recorded request is stored")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Run the Streamlit dashboard in the foreground (127.0.0.1:8501 unless configured otherwise)."""
    from monitor.dashboard_cmd import check_exposure, serve

    settings = _settings(args)
    check_exposure(settings, host=args.host)
    return serve(settings, host=args.host, port=args.port)


def cmd_sim(args: argparse.Namespace) -> int:
    """Serve the simulated GLM provider in the foreground."""
    from monitor.sim import serve
    from monitor.sim.profiles import demo_config

    console.print(
        f"simulated GLM provider on http://{args.host}:{args.port} "
        f"(openai: /api/paas/v4, anthropic: /api/anthropic, dashscope: /api/v1); Ctrl-C stops it"
    )
    serve(args.host, args.port, demo_config(seed=args.seed))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Health, spend and quota burn; exit code per the Nagios convention (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)."""
    from sqlalchemy.exc import SQLAlchemyError

    from monitor.status import State, build_report, to_json
    from monitor.store import current_revision, describe_url, head_revision, make_engine

    try:
        settings = _settings(args)
    except ConfigError as exc:
        return _unknown(args, f"config error: {exc}")
    url = settings.database.url
    engine = make_engine(url)
    try:
        revision, head = current_revision(engine), head_revision()
        if revision != head:
            return _unknown(
                args,
                f"database {describe_url(url)} is at schema revision {revision or '(blank)'}, not {head}: "
                "run `glm-monitor db upgrade` (or start `glm-monitor run`, which does it)",
            )
        report = build_report(engine, settings)
    except (SQLAlchemyError, MonitorError) as exc:
        return _unknown(args, f"cannot read database {describe_url(url)}: {type(exc).__name__}")
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(to_json(report), indent=2))
        return int(report.state)
    _print_status(report, settings.timezone)
    return int(report.state) if report.state != State.OK else 0


def _unknown(args: argparse.Namespace, why: str) -> int:
    if getattr(args, "json", False):
        print(json.dumps({"state": "UNKNOWN", "exit_code": 3, "summary": f"GLM MONITOR UNKNOWN - {why}"}))
    else:
        print(f"GLM MONITOR UNKNOWN - {why}")
    return 3


def _print_status(report: StatusReport, zone: str) -> None:
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(zone)
    colour = {0: "green", 1: "yellow", 2: "red", 3: "magenta"}[int(report.state)]
    out = console if console.is_terminal else Console(width=160)
    out.print(f"[bold {colour}]{escape(report.summary())}[/]")
    if report.targets:
        table = Table(title="Providers (last hour of probes)")
        for col in ("target", "health", "last outcome"):
            table.add_column(col, no_wrap=True)
        for col in ("median TTFT ms", "usual ms", "429 rate", "probes"):
            table.add_column(col, justify="right", no_wrap=True)
        style = {"healthy": "green", "throttled": "yellow", "down": "red"}
        for t in report.targets:
            usual = report.baseline_ttft_ms.get((t.provider, t.model))
            last = t.last_outcome + (f" ({t.last_error_code})" if t.last_error_code else "")
            table.add_row(
                f"{t.provider}/{t.model}",
                f"[{style.get(t.status, 'white')}]{t.status}[/]",
                last,
                "" if t.median_ttft_ms is None else f"{t.median_ttft_ms:.0f}",
                "" if usual is None else f"{usual:.0f}",
                f"{t.rate_429:.1%}",
                str(t.requests),
            )
        out.print(table)
    jpy, usd = report.spend["JPY"], report.spend["USD"]
    if jpy.has_data:
        out.print(
            f"Spend {jpy.month:%Y-%m}: ¥{jpy.month_to_date:,.0f} / ${usd.month_to_date:,.2f} so far, "
            f"forecast ¥{jpy.forecast:,.0f} / ${usd.forecast:,.2f} at month end ({jpy.method})",
            highlight=False,
        )
    if report.quotas:
        table = Table(title="Quotas")
        for col in ("plan", "window", "used / limit", "share", "burn / h", "runs out", "resets", "source"):
            table.add_column(col, no_wrap=col != "plan")
        for q in report.quotas:
            limit = "∞" if q.limit is None else f"{q.limit.normalize():f}"
            table.add_row(
                q.plan,
                q.window,
                f"{q.used.normalize():f} / {limit} {q.unit}",
                "" if q.share is None else f"{q.share:.0%}",
                "" if q.burn_per_hour is None else f"{q.burn_per_hour:.4g}",
                ("[red]" if q.runs_out_before_reset else "")
                + ("" if q.exhausts_at is None else f"{q.exhausts_at.astimezone(tz):%m-%d %H:%M}"),
                "" if q.resets_at is None else f"{q.resets_at.astimezone(tz):%m-%d %H:%M}",
                q.source,
            )
        out.print(table)


def cmd_db(args: argparse.Namespace) -> int:
    """Database maintenance: upgrade, downgrade, current."""
    from monitor.store import current_revision, describe_url, downgrade, head_revision, make_engine, upgrade

    url = _database_url(args)
    if args.db_command == "upgrade":
        upgrade(url, args.revision)
        console.print(f"{describe_url(url)} is at revision {args.revision}")
    elif args.db_command == "downgrade":
        downgrade(url, args.revision)
        console.print(f"{describe_url(url)} downgraded to {args.revision}")
    else:
        engine = make_engine(url)
        try:
            current = current_revision(engine)
        finally:
            engine.dispose()
        head = head_revision()
        state = "up to date" if current == head else f"behind (head is {head}); run `glm-monitor db upgrade`"
        console.print(f"{describe_url(url)}: revision {current or '(blank)'}, {state}")
    return 0


def cmd_prices(args: argparse.Namespace) -> int:
    """Print the price catalog in effect, with the source of each row."""

    settings = _settings(args)
    catalog = settings.price_catalog()
    day = args.at or catalog.accounting_day(datetime.now(UTC))
    rows = catalog.rows(day)
    if args.provider:
        rows = [r for r in rows if r.provider == args.provider]
    table = Table(
        title=f"Prices in effect on {day.isoformat()} ({settings.timezone} day; per 1M tokens; images per image)"
    )
    for col in ("provider", "model", "cur"):
        table.add_column(col, no_wrap=True)
    for col in ("input", "cached in", "cache write", "output", "per image", "from"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("source", no_wrap=not args.notes)

    def fmt(v: Decimal | None) -> str:
        return "" if v is None else f"{v.normalize():f}"

    for r in rows:
        tiered = f" (+{len(r.tiers) - 1} tiers)" if len(r.tiers) > 1 else ""
        table.add_row(
            r.provider,
            r.model + tiered,
            r.currency,
            fmt(r.input_per_mtok),
            fmt(r.cached_input_per_mtok),
            fmt(r.cache_write_per_mtok),
            fmt(r.output_per_mtok),
            fmt(r.per_image),
            r.effective_from.isoformat() if r.effective_from else "",
            r.source if args.notes else r.source.split(" (")[0],
        )
    # Piped output is not cut to 80 columns: the table is meant to be read whole or grepped.
    out = console if console.is_terminal else Console(width=220)
    out.print(table)
    return 0


def cmd_fx(args: argparse.Namespace) -> int:
    """Exchange rates: set, fetch, show."""
    from monitor import fx
    from monitor.money import Currency
    from monitor.store import make_engine, upgrade

    settings = _settings(args)
    url = settings.database.url
    upgrade(url)
    engine = make_engine(url)
    try:
        if args.fx_command == "set":
            rates: dict[Currency, Decimal] = dict(args.pairs)
            fx.store_rates(engine, args.day, rates, source="manual")
            console.print(f"stored for {args.day}: " + ", ".join(f"{b}JPY={r}" for b, r in rates.items()))
        elif args.fx_command == "fetch":
            day, fetched = fx.fetch_daily(engine, args.url or settings.fx.feed_url)
            console.print(
                f"stored ECB reference rates for {day}: "
                + ", ".join(f"{b}JPY={r.quantize(Decimal('0.0001'))}" for b, r in fetched.items())
            )
        else:
            book = fx.RateBook.load(engine, fx.default_rates(settings.fx.usd_jpy, settings.fx.cny_jpy))
            on = args.on or datetime.now(UTC).date()
            for base in ("USD", "CNY"):
                console.print(f"{on}: {book.rate(base, on).describe()}")
    finally:
        engine.dispose()
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Validate the config and say what it contains."""
    import os

    from monitor.config import config_path, missing_api_keys

    settings = _settings(args)
    path, why = config_path(args.config, os.environ)
    console.print(f"config: {path or '(none: built-in defaults)'} [{why}] is valid")
    console.print(
        f"database {settings.database.url}, timezone {settings.timezone}, vantage {settings.vantage}, "
        f"{len(settings.targets)} targets, {len(settings.plans)} plans, {len(settings.prices)} price overrides"
    )
    _print_probe_costs(settings)
    missing = missing_api_keys(settings)
    for line in missing:
        err_console.print(f"[yellow]warning:[/] {line}")
    return 0


def _print_probe_costs(settings: Settings) -> None:
    """Per target: interval after the budget, probes per 30 days and their worst-case cost."""
    from monitor.budget import monthly_probe_cost
    from monitor.scheduler import resolve_targets

    catalog = settings.price_catalog()
    now = datetime.now(UTC)
    for st in resolve_targets(settings, {}):
        probes, cost = monthly_probe_cost(
            catalog, st.target.provider.id, st.target.model, st.interval.seconds, st.target.max_tokens, at=now
        )
        price = "no known price" if cost is None else f"at most {cost.currency} {cost.amount.quantize(Decimal('0.01'))}"
        line = f"target {st.target.name}: every {st.interval.seconds:g}s, {probes} probes per 30 days, {price}"
        if st.interval.reason:
            line += f" ({st.interval.reason})"
        console.print(line, highlight=False)


def _duration(text: str) -> float:
    """A duration as the config writes them ("15", "15s", "5m", "1h")."""
    from monitor.config import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date; expected YYYY-MM-DD") from None


def _pair(text: str) -> tuple[str, Decimal]:
    from monitor.fx import parse_pair

    try:
        return parse_pair(text)
    except MonitorError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="glm-monitor",
        description="Watch the APIs serving Zhipu's GLM models: latency, throttling, peak hours, usage and cost.",
    )
    parser.add_argument("--version", action="version", version=f"glm-monitor {__version__}")
    parser.add_argument(
        "--config", metavar="PATH", help="config file (default: $GLM_MONITOR_CONFIG, else ./glm-monitor.toml)"
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="-v: one log line per probe; -vv: debug logs of every library",
    )
    db_url = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: given before the command or after it, whichever; never reset by the other position.
    db_url.add_argument(
        "--database-url", default=argparse.SUPPRESS, help="use this database instead of the configured one"
    )
    parser.add_argument(
        "--database-url", default=argparse.SUPPRESS, help="use this database instead of the configured one"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "run", help="run the prober daemon and its dashboard (migrates the database first)", parents=[db_url]
    )
    p.add_argument("--no-dashboard", dest="dashboard", action="store_false", help="probe only; no dashboard")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("demo", help="simulated providers + daemon (+ history): a first look without API keys")
    p.add_argument("--backfill", metavar="DAYS", help="first fill this much simulated history, e.g. 7d")
    p.add_argument(
        "--interval", type=_duration, default=15.0, help='probe interval: seconds or a duration such as "15s", "5m"'
    )
    p.add_argument("--sim-port", type=int, default=0, help="simulator port (default: any free port)")
    p.add_argument(
        "--database-url",
        default=argparse.SUPPRESS,
        help="where demo data goes (default sqlite:///./glm-monitor-demo.db)",
    )
    p.add_argument("--no-dashboard", dest="dashboard", action="store_false", help="probe only; no dashboard")
    p.add_argument("--dashboard-port", type=int, help="dashboard port (default 8501)")
    p.set_defaults(handler=cmd_demo)

    p = sub.add_parser("probe", help="probe targets now", parents=[db_url])
    p.add_argument("--once", action="store_true", required=True, help="probe every target once and exit")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--no-store", dest="store", action="store_false", help="do not write the results")
    p.set_defaults(handler=cmd_probe)

    p = sub.add_parser("dashboard", help="the Streamlit dashboard (127.0.0.1:8501 by default)", parents=[db_url])
    p.add_argument("--host", help="listen address (default: dashboard.host, 127.0.0.1; others need a password)")
    p.add_argument("--port", type=int, help="listen port (default: dashboard.port, 8501)")
    p.set_defaults(handler=cmd_dashboard)

    p = sub.add_parser("proxy", help="recording reverse proxy: point SDKs, Claude Code or curl at it", parents=[db_url])
    p.add_argument(
        "--host",
        help="listen address (default: proxy.host, 127.0.0.1; any other needs $GLM_MONITOR_PROXY_TOKEN, "
        "sent by clients as X-Monitor-Token)",
    )
    p.add_argument("--port", type=int, help="listen port (default: proxy.port, 8787)")
    p.set_defaults(handler=cmd_proxy)

    p = sub.add_parser("sim", help="serve the simulated GLM provider (all dialects) for demos and tests")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8900)
    p.add_argument("--seed", type=int, default=42, help="random seed: the same seed gives the same failures")
    p.set_defaults(handler=cmd_sim)

    p = sub.add_parser(
        "status",
        help="health, spend and quota burn; Nagios exit codes (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)",
        parents=[db_url],
    )
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("db", help="database maintenance (Alembic migrations)", parents=[db_url])
    dbsub = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    up = dbsub.add_parser("upgrade", help="bring the database to the newest schema", parents=[db_url])
    up.add_argument("revision", nargs="?", default="head")
    down = dbsub.add_parser("downgrade", help="take the schema back (default: to an empty database)", parents=[db_url])
    down.add_argument("revision", nargs="?", default="base")
    dbsub.add_parser("current", help="show the schema revision", parents=[db_url])
    p.set_defaults(handler=cmd_db)

    p = sub.add_parser("prices", help="print the price catalog in effect, with sources")
    p.add_argument("--at", type=_day, help="show prices in effect on this day (YYYY-MM-DD)")
    p.add_argument("--provider", help="only this provider")
    p.add_argument("--notes", action="store_true", help="show where each price comes from in full")
    p.set_defaults(handler=cmd_prices)

    p = sub.add_parser("fx", help="exchange rates (JPY/USD/CNY)", parents=[db_url])
    fxsub = p.add_subparsers(dest="fx_command", required=True, metavar="ACTION")
    fset = fxsub.add_parser(
        "set", help="store rates for a day, e.g. fx set 2026-11-01 USDJPY=151.2 CNYJPY=21.3", parents=[db_url]
    )
    fset.add_argument("day", type=_day)
    fset.add_argument("pairs", nargs="+", type=_pair, metavar="PAIR=RATE")
    ffetch = fxsub.add_parser(
        "fetch", help="download the ECB daily reference rates and store that day's rates", parents=[db_url]
    )
    ffetch.add_argument("--url", help="feed URL (default: fx.feed_url in the config)")
    fshow = fxsub.add_parser("show", help="show the rates in force on a day", parents=[db_url])
    fshow.add_argument("--on", type=_day, help="day (default: today)")
    p.set_defaults(handler=cmd_fx)

    p = sub.add_parser("config", help="validate the config file and summarise it", parents=[db_url])
    p.set_defaults(handler=cmd_config)
    return parser


def _setup_logging(verbose: int) -> None:
    """Our own logs at INFO (-v: DEBUG, one line per probe); other libraries' at WARNING (-vv: DEBUG)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose >= 2 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("monitor").setLevel(logging.DEBUG if verbose else logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``glm-monitor``; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        return handler(args)
    except ConfigError as exc:
        err_console.print(f"[red]config error:[/] {escape(str(exc))}", highlight=False)
        return 2
    except MonitorError as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
