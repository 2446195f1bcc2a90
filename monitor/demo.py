"""The newcomer's first run: the simulator, a daemon probing it, and (with --backfill) a week of history.

``glm-monitor demo`` (and ``glm-monitor run`` when no targets are configured) starts the simulated provider
on 127.0.0.1, points several providers at it (a fast paid model, a free one that throttles, one with a strong
peak-hour slowdown, one on DashScope), probes them at a short interval into a local SQLite file, and stops
everything on Ctrl-C. Simulated data goes to its own database file so it never mixes with real measurements.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import tomli_w
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from monitor.backfill import BackfillTarget, probe_history, traffic_history
from monitor.config import DEMO_CONFIG_FILE, Settings, settings_from_dict
from monitor.sim import SimServer
from monitor.sim.profiles import demo_config
from monitor.writer import write_events

log = logging.getLogger(__name__)

DEMO_DATABASE_URL = "sqlite:///./glm-monitor-demo.db"
DEMO_KEY = "demo-key-not-secret"
DEMO_VANTAGE = "demo"

# (provider, model, what it shows)
DEMO_TARGETS: tuple[tuple[str, str, str], ...] = (
    ("zai", "glm-4.7", "fast paid flagship"),
    ("zai", "glm-4.7-flash", "free tier that throttles (1302/1305)"),
    ("bigmodel", "glm-5", "x3 slower in the 15:00-18:00 CST peak"),
    ("dashscope", "glm-4.6", "DashScope, priced in CNY"),
)


# One plan of each quota kind the demo traffic can burn (the benchmarks reuse them).
DEMO_PLANS: tuple[dict[str, Any], ...] = (
    {
        "kind": "free_tier",
        "name": "zai-free",
        "provider": "zai",
        "models": ["glm-4.7-flash"],
        "requests_per_minute": 20,
        "requests_per_day": 250,
        "concurrency": 1,
    },
    {
        "kind": "coding_plan",
        "name": "coding-pro",
        "provider": "zai-coding",
        "level": "pro",
        "unit": "prompts",
        "five_hour_limit": 600,
        "weekly_limit": 6000,
        "model_weights": {"glm-5": 3},
        "peak_multiplier": 2,
        "poll_quota": False,
    },
    {"kind": "monthly_budget", "name": "team-budget", "amount": 30000, "currency": "JPY"},
)


@dataclass(frozen=True, slots=True)
class DemoEnvironment:
    """What the demo started: the simulator and the settings that point at it."""

    sim: SimServer
    settings: Settings
    environ: dict[str, str]
    config_file: Path | None = None


def demo_settings(
    sim_base_url: str, database_url: str, *, interval_s: float = 15.0, dashboard_port: int | None = None
) -> Settings:
    """Settings probing the simulator at ``sim_base_url`` as if it were Z.ai, BigModel and DashScope."""
    return settings_from_dict(
        demo_data(sim_base_url, database_url, interval_s=interval_s, dashboard_port=dashboard_port)
    )


def write_demo_config(data: dict[str, Any], path: str | os.PathLike[str] = DEMO_CONFIG_FILE) -> Path:
    """Write the demo's settings as a config file (a SQLite path made absolute), so that ``status``,
    ``dashboard`` and ``proxy`` started in this folder without a config find the demo's data, plans and
    simulator. Returns the file."""
    data = dict(data)
    database = dict(data["database"])
    url = make_url(database["url"])
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        database["url"] = url.set(database=str(Path(url.database).resolve())).render_as_string(hide_password=False)
    data["database"] = database
    target = Path(path)
    target.write_text(_DEMO_HEADER + tomli_w.dumps(data), encoding="utf-8")
    return target


_DEMO_HEADER = """\
# Written by `glm-monitor demo` (and `glm-monitor run` with no targets): the demo's database, plans and
# simulated providers. `glm-monitor status`, `dashboard` and `proxy` started in this folder use it while there is
# no glm-monitor.toml; the simulator's address is valid while the demo runs. Delete this file to forget the demo.

"""


def demo_data(
    sim_base_url: str, database_url: str, *, interval_s: float = 15.0, dashboard_port: int | None = None
) -> dict[str, Any]:
    """The demo's config data (what ``demo_settings`` validates and ``write_demo_config`` writes)."""
    data: dict[str, Any] = {
        "vantage": DEMO_VANTAGE,
        "dashboard": {"port": dashboard_port or 8501},
        "database": {"url": database_url},
        "providers": {
            "zai": {"base_url": f"{sim_base_url}/api/paas/v4", "api_key_env": "GLM_MONITOR_DEMO_KEY"},
            "bigmodel": {"base_url": f"{sim_base_url}/api/paas/v4", "api_key_env": "GLM_MONITOR_DEMO_KEY"},
            "dashscope": {"base_url": f"{sim_base_url}/compatible-mode/v1", "api_key_env": "GLM_MONITOR_DEMO_KEY"},
            "zai-coding": {"base_url": f"{sim_base_url}/api/coding/paas/v4", "api_key_env": "GLM_MONITOR_DEMO_KEY"},
        },
        "prober": {"interval": interval_s, "jitter": min(3.0, interval_s / 4), "deadline": 30},
        "targets": [{"provider": p, "model": m} for p, m, _ in DEMO_TARGETS],
        "plans": [dict(p) for p in DEMO_PLANS],
    }
    return data


def start(
    database_url: str = DEMO_DATABASE_URL,
    *,
    sim_port: int = 0,
    interval_s: float = 15.0,
    dashboard_port: int | None = None,
) -> DemoEnvironment:
    """Start the simulator (``sim_port`` 0: any free port) and build the demo settings around it."""
    sim = SimServer(demo_config(), port=sim_port).start()
    data = demo_data(sim.base_url, database_url, interval_s=interval_s, dashboard_port=dashboard_port)
    settings = settings_from_dict(data)
    try:
        written: Path | None = write_demo_config(data)
    except OSError as exc:  # a read-only folder: the demo still runs; only the other commands will not find it
        log.warning("could not write %s (%s): other commands here will not find the demo", DEMO_CONFIG_FILE, exc)
        written = None
    return DemoEnvironment(sim, settings, {"GLM_MONITOR_DEMO_KEY": DEMO_KEY}, written)


def backfill(engine: Engine, settings: Settings, days: float, *, now: datetime | None = None) -> int:
    """Write ``days`` of simulated probe history and traffic ending at ``now``; returns the number of events."""
    end = now or datetime.now(UTC)
    start_ts = end - timedelta(days=days)
    catalog = settings.price_catalog()
    profiles = demo_config().models
    targets = [BackfillTarget(p, m, profiles[m]) for p, m, _ in DEMO_TARGETS]
    written = 0
    batch: list[Any] = []
    streams = (
        probe_history(
            targets, start=start_ts, end=end, every=timedelta(minutes=5), vantage=settings.vantage, catalog=catalog
        ),
        traffic_history(start=start_ts, end=end, vantage=settings.vantage, catalog=catalog),
    )
    for stream in streams:
        for event in stream:
            batch.append(event)
            if len(batch) >= 5000:
                write_events(engine, batch)
                written += len(batch)
                batch.clear()
    write_events(engine, batch)
    return written + len(batch)


def parse_days(text: str) -> float:
    """``"7d"`` -> 7.0, ``"36h"`` -> 1.5, ``"3"`` -> 3.0 days."""
    text = text.strip().lower()
    if text.endswith("d"):
        return float(text[:-1])
    if text.endswith("h"):
        return float(text[:-1]) / 24
    return float(text)
