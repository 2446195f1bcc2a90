"""Database access: engines (SQLite in WAL mode with a busy timeout; Postgres), migrations, and sessions.

The batched writer lives in ``monitor.writer``.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from monitor.errors import StoreError

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 5000


def _migrations_dir() -> Path:
    """Where Alembic's env.py and versions live (top-level migrations/, shipped as monitor.migrations)."""
    spec = importlib.util.find_spec("monitor.migrations")
    if spec is None or not spec.submodule_search_locations:
        raise StoreError("the migrations folder is missing from this installation of glm-monitor; reinstall it")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def normalise_url(url: str) -> str:
    """Turn a user's URL into the one we connect with: ``postgresql://`` uses psycopg 3, SQLite paths made absolute.

    Raises ``StoreError`` naming the URL (password hidden) when it cannot be parsed.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreError(
            f"database URL {url!r} is not a valid URL; expected e.g. sqlite:///./glm-monitor.db "
            "or postgresql://user@127.0.0.1:5432/glm"
        ) from exc
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        path = Path(parsed.database).expanduser()
        parsed = parsed.set(database=str(path.resolve()))
    return parsed.render_as_string(hide_password=False)


def describe_url(url: str) -> str:
    """The URL with any password hidden, for messages and logs."""
    try:
        return make_url(normalise_url(url)).render_as_string(hide_password=True)
    except (ArgumentError, StoreError):
        return "<unparseable database URL>"


def _sqlite_pragmas(busy_timeout_ms: int) -> Any:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        # WAL lets the dashboard read while the daemon writes; the busy timeout makes a briefly locked
        # database wait instead of failing; NORMAL sync is durable across process crashes in WAL mode.
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return on_connect


def make_engine(url: str, *, sqlite_busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS, **kwargs: Any) -> Engine:
    """An engine for ``url``. SQLite files get WAL mode, a busy timeout and their parent folder created."""
    real = normalise_url(url)
    parsed = make_url(real)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {}).setdefault("timeout", sqlite_busy_timeout_ms / 1000)
        engine = create_engine(real, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas(sqlite_busy_timeout_ms))
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(real, **kwargs)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions bound to ``engine`` that keep loaded objects usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session committed on success and rolled back on error."""
    with session_factory(engine)() as session, session.begin():
        yield session


def alembic_config(url: str) -> Any:
    """An Alembic ``Config`` pointing at our migrations and at ``url`` (no alembic.ini needed)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_migrations_dir()))
    # ConfigParser treats % as interpolation; URL-encoded passwords contain it.
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (default: the newest). Raises ``StoreError`` on failure.

    Several processes may call this at once on one database: each migrates under a cross-process lock (a
    Postgres advisory lock; a lock file beside a SQLite file), so the first does the work and the others find
    the database already at ``revision``."""
    _migrate(url, "upgrade", revision)


def _migrate(url: str, direction: str, revision: str) -> None:
    from alembic import command

    cfg = alembic_config(url)
    engine = make_engine(url)
    try:
        with _migration_lock(engine) as conn:
            cfg.attributes["connection"] = conn
            getattr(command, direction)(cfg, revision)
            conn.commit()
    except SQLAlchemyError as exc:
        raise StoreError(
            f"could not {direction} database {describe_url(url)}: {exc.__class__.__name__}: {exc}"
        ) from exc
    finally:
        engine.dispose()


MIGRATION_LOCK_KEY = 0x676C6D2D6D6F6E
"""The Postgres advisory lock migrations hold ("glm-mon" in ASCII)."""


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[Connection]:
    """A connection holding the cross-process migration lock of ``engine``'s database while the block runs."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.exec_driver_sql(f"SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})")
            conn.commit()
            try:
                yield conn
            finally:
                conn.rollback()
                conn.exec_driver_sql(f"SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})")
                conn.commit()
        return
    database = engine.url.database
    lock_path = Path(database + ".migrate-lock") if database and database != ":memory:" else None
    if lock_path is None:
        with engine.connect() as conn:
            yield conn
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            with engine.connect() as conn:
                yield conn
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or the error it wraps) says the database could not be reached or used right now
    (refused connection, server gone, locked file), as opposed to a problem with the schema or the request."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (OperationalError, InterfaceError)):
            return True
        seen = seen.__cause__
    return False


def upgrade_or_defer(url: str) -> Callable[[], None] | None:
    """Bring ``url`` to the newest revision now; if the database cannot be reached, return a step that does it
    later (None when done now).

    Give the step to ``EventWriter(prepare=...)``: a daemon, proxy or SDK started while the database is away then
    records into the journal and, once the database answers, migrates it before writing. Other failures (a
    broken schema, a revision we do not know) raise ``StoreError`` at once.
    """
    try:
        upgrade(url)
        return None
    except StoreError as exc:
        if not unreachable(exc):
            raise
        log.warning(
            "database %s unreachable (%s): recording to the journal; it will be migrated and filled when it is back",
            describe_url(url),
            type(exc.__cause__).__name__,
        )
    done = threading.Event()

    def migrate() -> None:
        if not done.is_set():
            upgrade(url)
            done.set()
            log.info("database %s is back and at the newest revision", describe_url(url))

    return migrate


def downgrade(url: str, revision: str = "base") -> None:
    """Take the database at ``url`` down to ``revision`` (default: empty), under the migration lock."""
    _migrate(url, "downgrade", revision)


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at, or None for a blank database."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    """The newest revision among our migrations."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def table_names(engine: Engine) -> set[str]:
    """Names of the tables present in the database."""
    return set(inspect(engine).get_table_names())
