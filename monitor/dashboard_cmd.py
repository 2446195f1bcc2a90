"""Starting the Streamlit dashboard: ``glm-monitor dashboard`` (and alongside ``demo`` / ``run``).

``launch(settings)`` runs ``streamlit run`` on the dashboard's ``app.py`` in a child process, bound to
``dashboard.host:dashboard.port`` (127.0.0.1:8501 by default), headless, without usage statistics and without
opening a browser. The settings travel to the app as JSON in an environment variable (they hold no secrets: API
keys and the dashboard password stay in the variables the config names), so settings built in code, such as
the demo's, reach the app exactly as the launcher has them.

Listening on any address other than a loopback one requires a password: the environment variable named by
``dashboard.password_env``, or ``password`` in Streamlit's ``secrets.toml``. ``check_exposure`` refuses to
start without one, and the app itself asks for the password before it shows anything.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import os
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from monitor.config import Settings
from monitor.errors import ConfigError
from monitor.exposure import is_loopback
from monitor.signals import StopRequested, stop_on_signals
from monitor.store import describe_url, normalise_url

__all__ = [
    "AS_OF_ENV",
    "SECRETS_PASSWORD_KEY",
    "SETTINGS_ENV",
    "app_path",
    "check_exposure",
    "configured_password",
    "dashboard_command",
    "dashboard_environ",
    "free_port",
    "import_dashboard",
    "is_loopback",
    "launch",
    "serve",
    "settings_from_environ",
    "wait_until_ready",
]

SETTINGS_ENV = "GLM_MONITOR_DASHBOARD_SETTINGS"
"""The Settings (JSON) the app reads; set by the launcher."""
AS_OF_ENV = "GLM_MONITOR_DASHBOARD_AS_OF"
"""Optional ISO time the dashboard treats as "now" (a frozen database, screenshots, benchmarks)."""
SECRETS_PASSWORD_KEY = "password"
"""The key of the dashboard password in Streamlit's secrets.toml."""


def app_path() -> Path:
    """The dashboard's ``app.py``: the installed ``monitor.dashboard`` package, else the source tree's ``dashboard/``.

    Raises ``ConfigError`` when neither exists (a broken installation).
    """
    try:
        spec = importlib.util.find_spec("monitor.dashboard")
    except ImportError:
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / "app.py"
            if candidate.is_file():
                return candidate.resolve()
    source_tree = Path(__file__).resolve().parent.parent / "dashboard" / "app.py"
    if source_tree.is_file():
        return source_tree
    raise ConfigError(
        "the dashboard (monitor/dashboard/app.py) is missing from this installation; reinstall glm-monitor"
    )


def import_dashboard() -> ModuleType:
    """The dashboard package as ``monitor.dashboard``, whether installed or run from the source tree.

    An installation ships ``dashboard/`` as ``monitor.dashboard``; in a source tree whose install lacks that
    mapping, the folder beside ``app.py`` is registered under the same name, so the app and its pages import
    one package either way.
    """
    name = "monitor.dashboard"
    if name in sys.modules:
        return sys.modules[name]
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
    folder = app_path().parent
    spec = importlib.util.spec_from_file_location(
        name, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load the dashboard package from {folder}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    import monitor

    setattr(monitor, "dashboard", module)  # noqa: B010 - a submodule attribute, as the import system sets it
    return module


def _secrets_files(cwd: Path | None = None) -> list[Path]:
    # Streamlit's default search order (secrets.files): the user's folder, then the working directory's.
    return [Path.home() / ".streamlit" / "secrets.toml", (cwd or Path.cwd()) / ".streamlit" / "secrets.toml"]


def _secrets_password(files: Sequence[Path]) -> str | None:
    found: str | None = None
    for file in files:
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            continue
        value = data.get(SECRETS_PASSWORD_KEY)
        if isinstance(value, str) and value:
            found = value  # later files win, as in Streamlit
    return found


def configured_password(
    settings: Settings, environ: Mapping[str, str] | None = None, *, secrets_files: Sequence[Path] | None = None
) -> str | None:
    """The dashboard password: ``$<dashboard.password_env>``, else ``password`` in secrets.toml; None if neither."""
    env = os.environ if environ is None else environ
    var = settings.dashboard.password_env
    if var and env.get(var):
        return env[var]
    return _secrets_password(_secrets_files() if secrets_files is None else secrets_files)


def check_exposure(
    settings: Settings,
    *,
    host: str | None = None,
    environ: Mapping[str, str] | None = None,
    secrets_files: Sequence[Path] | None = None,
) -> None:
    """Refuse (``ConfigError``) to listen beyond loopback without a password; the message says how to set one."""
    bind = host or settings.dashboard.host
    if is_loopback(bind):
        return
    if configured_password(settings, environ, secrets_files=secrets_files):
        return
    var = settings.dashboard.password_env
    where = str(settings.source or "<config>")
    if var:
        how = f"the environment variable {var} (named by dashboard.password_env) is not set or empty: set it"
    else:
        how = (
            "set dashboard.password_env to the name of an environment variable and put the password in it, "
            f'or add {SECRETS_PASSWORD_KEY} = "..." to .streamlit/secrets.toml'
        )
    raise ConfigError(
        f"{where}: dashboard.host = {bind!r} listens beyond this machine, which needs a password; {how}. "
        "Or keep the default host 127.0.0.1."
    )


def dashboard_environ(
    settings: Settings, *, as_of: datetime | None = None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment for the app's process: ``base`` (default: ours) plus the settings and optional "now"."""
    env = dict(os.environ if base is None else base)
    url = normalise_url(settings.database.url)  # relative SQLite paths: resolved against the launcher's folder
    shipped = settings.model_copy(update={"database": settings.database.model_copy(update={"url": url})})
    env[SETTINGS_ENV] = shipped.model_dump_json()
    env["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] = "false"
    if as_of is not None:
        if as_of.tzinfo is None:
            raise ValueError("as_of must be timezone-aware")
        env[AS_OF_ENV] = as_of.isoformat()
    else:
        env.pop(AS_OF_ENV, None)
    return env


def settings_from_environ(environ: Mapping[str, str] | None = None) -> Settings | None:
    """The Settings the launcher passed (``SETTINGS_ENV``), or None when the app was started some other way."""
    env = os.environ if environ is None else environ
    text = env.get(SETTINGS_ENV)
    if not text:
        return None
    try:
        return Settings.model_validate_json(text)
    except ValueError as exc:
        raise ConfigError(f"${SETTINGS_ENV}: not valid dashboard settings: {exc}") from None


def dashboard_command(host: str, port: int, *, headless: bool = True) -> list[str]:
    """The ``streamlit run`` command line for the app on ``host:port``."""
    return [
        sys.executable,
        "-m",
        "monitor.dashboard_cmd",  # streamlit's own command line, after importing what the pages need
        "run",
        str(app_path()),
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.headless",
        "true" if headless else "false",
        "--browser.gatherUsageStats",
        "false",
        "--server.runOnSave",
        "false",
        "--server.fileWatcherType",
        "none",
        "--global.developmentMode",
        "false",
        "--client.toolbarMode",
        "minimal",
    ]


def launch(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    headless: bool = True,
    as_of: datetime | None = None,
    environ: Mapping[str, str] | None = None,
    **popen: Any,
) -> subprocess.Popen[bytes]:
    """Start the dashboard (``streamlit run``) in a child process and return it without waiting.

    ``host``/``port`` default to ``dashboard.host``/``dashboard.port``. Raises ``ConfigError`` (before starting
    anything) when the address is not a loopback one and no password is configured. ``as_of`` freezes the
    dashboard's "now"; ``environ`` replaces our environment as the base of the child's; ``popen`` goes to
    ``subprocess.Popen`` (e.g. ``stdout``).
    """
    bind = host or settings.dashboard.host
    check_exposure(settings, host=bind, environ=environ)
    env = dashboard_environ(settings, as_of=as_of, base=environ)
    command = dashboard_command(bind, port or settings.dashboard.port, headless=headless)
    return subprocess.Popen(command, env=env, **popen)


def wait_until_ready(process: subprocess.Popen[Any], url: str, *, timeout_s: float = 60.0) -> None:
    """Wait until the dashboard at ``url`` answers its health check; RuntimeError if it exits or times out."""
    health = url.rstrip("/") + "/_stcore/health"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the dashboard exited with code {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(health, timeout=2) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the dashboard did not answer at {health} within {timeout_s:g} s")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def serve(settings: Settings, *, host: str | None = None, port: int | None = None, headless: bool = True) -> int:
    """Run the dashboard in the foreground until it exits or Ctrl-C; returns its exit code (0 after Ctrl-C)."""
    bind = host or settings.dashboard.host
    number = port or settings.dashboard.port
    process = launch(settings, host=bind, port=number, headless=headless)
    shown = f"[{bind}]" if ":" in bind else bind
    print(f"dashboard: http://{shown}:{number} (database {describe_url(settings.database.url)})", flush=True)
    try:
        with stop_on_signals(raise_=True):
            return process.wait()
    except (KeyboardInterrupt, StopRequested):
        # SIGTERM as Ctrl-C: Streamlit is stopped with us, never left running on its own (a second signal
        # meanwhile is only noted).
        with stop_on_signals():
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return 0


def _preload() -> None:
    """Import what the pages need before the server takes sessions, so the first page view is not much slower
    than the next ones (pandas, altair, SQLAlchemy, the analytics and the price data take ~1.5 s here).

    The dashboard's own modules are left to the first run: their caches must be made inside Streamlit's runtime.
    """
    for name in ("pandas", "altair", "sqlalchemy", "monitor.analytics", "monitor.quota", "monitor.outcomes"):
        importlib.import_module(name)
    import altair as alt
    import pandas as pd

    from monitor.pricing import default_catalog
    from monitor.usage import Usage

    # The first quote loads genai-prices' data (shared by every catalog).
    default_catalog().quote("zai", "glm-4.7", Usage(input_tokens=1), datetime.now(UTC))
    # The first chart spec builds altair's Vega-Lite schema validator and imports its pandas adapter (~0.1 s).
    alt.Chart(pd.DataFrame({"when": [datetime.now(UTC)], "value": [1.0]})).mark_line().encode(
        x="when:T", y="value:Q"
    ).to_dict()


def main() -> None:
    """``python -m monitor.dashboard_cmd run APP [streamlit options]``: preload, then Streamlit's command line."""
    _preload()
    from streamlit.web import cli

    # Streamlit runs a full garbage collection after every script run (runner.postScriptGC), holding the GIL
    # while the run's last messages wait to be sent: over the ~200,000 objects of the modules loaded so far that
    # took ~120 ms a run. They live as long as the process, so they are set aside from collection.
    gc.freeze()
    cli.main(prog_name="streamlit")


if __name__ == "__main__":
    main()
