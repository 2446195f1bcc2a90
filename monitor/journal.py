"""The journal: every event is appended to a file on local disk (one ``write``) before anyone sees it complete.

Each process writes its own segment file in the journal directory and holds an exclusive ``flock`` on it while
it lives; the batched writer stores the lines in the database and notes in ``<segment>.done`` how far that got.
A segment nobody holds (its process died, even by SIGKILL) is adopted by the next writer that looks, replayed
from its ``.done`` offset and removed. Lines are ``monitor.spool`` lines (JSON, exact datetimes and Decimals);
replays are idempotent because every row has its ``event_id``. The design and its windows: docs/journal.md.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from monitor.spool import decode, encode, replay_lines

log = logging.getLogger(__name__)

SUFFIX = ".jnl"
DONE_SUFFIX = ".done"
DEAD_LETTER_SUFFIX = ".dead-letter.jsonl"
DEFAULT_FSYNC_INTERVAL_S = 1.0
DEFAULT_SEGMENT_BYTES = 16 * 1024 * 1024
"""A fully stored segment larger than this is replaced by a fresh one (and removed)."""

WriteRows = Callable[[str, list[dict[str, Any]]], None]


def describe_os_error(exc: OSError, path: Path | str) -> str:
    """One line saying what is wrong with ``path``: "is read-only (EROFS)", "is full (ENOSPC)", ..."""
    name = errno.errorcode.get(exc.errno or 0, "")
    what = {
        errno.EROFS: "is on a read-only file system",
        errno.EACCES: "is not writable by this user",
        errno.EPERM: "is not writable by this user",
        errno.ENOSPC: "is on a full disk",
        errno.EDQUOT: "is over its disk quota",
        errno.ENOENT: "does not exist",
        errno.EIO: "cannot be written (I/O error)",
    }.get(exc.errno or 0, f"cannot be written ({exc.strerror or exc})")
    return f"{path} {what}" + (f" ({name})" if name else "")


class _Segment:
    """One open segment of this process: its file, its lock, where its byte 0 sits in the journal's positions."""

    __slots__ = ("base", "done_fd", "fd", "path", "size")

    def __init__(self, directory: Path, name: str, base: int) -> None:
        self.path = directory / f"{name}-{os.getpid()}-{uuid.uuid4().hex[:12]}{SUFFIX}"
        self.base = base
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.done_fd = os.open(_done_path(self.path), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except BaseException:
            os.close(self.fd)
            self.path.unlink(missing_ok=True)
            raise
        self.size = 0

    def close(self, *, remove: bool) -> None:
        os.close(self.done_fd)
        if remove:
            self.path.unlink(missing_ok=True)
            _done_path(self.path).unlink(missing_ok=True)
        os.close(self.fd)  # last: the lock goes with it, so nobody adopts a segment being removed


def _done_path(segment: Path) -> Path:
    return segment.with_name(segment.name + DONE_SUFFIX)


def _read_done(segment: Path) -> int:
    try:
        return int(_done_path(segment).read_bytes().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


class Journal:
    """This process's journal in ``directory``, its files named after ``name`` (one name per database: a
    directory shared by processes writing to different databases never mixes them). ``append`` is safe from
    any thread; positions only grow.

    ``append`` returns the journal position just past the line; ``stored(position)`` records that every line up
    to it is in the database. Lines are fsync-ed at most ``fsync_interval_s`` after they were written (the
    window a power loss can take; the death of the process takes nothing once ``append`` has returned).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        name: str = "events",
        fsync_interval_s: float = DEFAULT_FSYNC_INTERVAL_S,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> None:
        self.directory = Path(directory)
        self.name = name  # segments of other names (other databases) in the same directory are never touched
        self.fsync_interval_s = fsync_interval_s
        self.segment_bytes = segment_bytes
        self.lock = threading.Lock()  # appends, rotation, and the caller's own bookkeeping in ``append``'s ``then``
        self._segment: _Segment | None = None
        self._position = 0  # the journal position past the last line appended
        self._stored = 0  # every line before this position is in the database
        self._dirty = threading.Event()
        self._closed = threading.Event()
        self._syncer: threading.Thread | None = None
        self.skipped_lines = 0

    # --- this process's segment

    def open(self) -> Journal:
        """Create the directory and this process's segment; raises ``OSError`` when the directory is unusable."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.lock:
            if self._segment is None:
                self._segment = _Segment(self.directory, self.name, self._position)
        if self._syncer is None:
            self._syncer = threading.Thread(target=self._sync_loop, name="glm-monitor-journal-fsync", daemon=True)
            self._syncer.start()
        return self

    @property
    def is_open(self) -> bool:
        """True while a segment is open for appends."""
        return self._segment is not None

    @property
    def segment_path(self) -> Path | None:
        """This process's current segment file (None while closed)."""
        segment = self._segment
        return segment.path if segment is not None else None

    def append(self, table: str, row: dict[str, Any], then: Callable[[int], None] | None = None) -> int:
        """Append one row with a single ``write``; return the position past it, after calling ``then(position)``
        under the journal's lock (so whatever ``then`` queues is queued in journal order).

        Raises ``OSError`` (a torn line is cut off again first) or ``RuntimeError`` when no segment is open.
        """
        line = encode(table, row)
        with self.lock:
            segment = self._segment
            if segment is None:
                raise RuntimeError("the journal is not open")
            written = os.write(segment.fd, line)
            if written != len(line):
                self._finish_write(segment, line, written)
            segment.size += len(line)
            self._position = position = segment.base + segment.size
            if then is not None:
                then(position)
        self._dirty.set()
        return position

    @staticmethod
    def _finish_write(segment: _Segment, line: bytes, written: int) -> None:
        """Write the rest of a line that went out in part; on failure cut the part off again and raise."""
        try:
            while written < len(line):
                written += os.write(segment.fd, line[written:])
        except OSError:
            with contextlib.suppress(OSError):  # if it fails the torn line stays; a replay skips and counts it
                os.ftruncate(segment.fd, segment.size)
            raise

    def stored(self, position: int) -> None:
        """Every line before ``position`` is in the database: note it (no fsync: a lost note only means a
        replay finds the rows already stored) and start a new segment when this one is done and large."""
        segment = self._segment
        if segment is None or position <= self._stored:
            return
        self._stored = position
        offset = position - segment.base
        # The note only saves a replay some work (stored rows are skipped by their ids): a full or failing disk
        # must not stop the writer over it, and neither may a new segment that cannot be made.
        with contextlib.suppress(OSError):
            if offset >= 0:
                os.pwrite(segment.done_fd, b"%020d\n" % offset, 0)
            if offset == segment.size and segment.size >= self.segment_bytes:
                self._rotate()

    def _rotate(self) -> None:
        with self.lock:
            old = self._segment
            if old is None or self._stored != old.base + old.size:
                return  # something was appended meanwhile; rotate on a later note
            self._segment = _Segment(self.directory, self.name, old.base + old.size)
        old.close(remove=True)

    def unstored(self) -> Iterator[tuple[int, str, dict[str, Any]]]:
        """This process's lines not yet noted as stored, up to the current end: (position past it, table, row)."""
        segment = self._segment
        if segment is None:
            return
        with self.lock:
            end = segment.size
        start = max(0, self._stored - segment.base)
        with open(segment.path, "rb") as f:
            f.seek(start)
            position = start
            while position < end:
                line = f.readline(end - position)
                if not line:
                    break
                position += len(line)
                if not line.endswith(b"\n"):
                    break  # cannot happen for this process's own appends (they are whole or cut off)
                try:
                    table, row = decode(line)
                except ValueError:
                    self.skipped_lines += 1
                    continue
                yield segment.base + position, table, row

    def forget(self) -> None:
        """In a forked child: let go of the parent's segment without touching it (the parent keeps its lock)."""
        segment, self._segment = self._segment, None
        self._closed.set()
        if segment is not None:
            with contextlib.suppress(OSError):
                os.close(segment.done_fd)
                os.close(segment.fd)

    def close(self) -> bool:
        """Fsync and close this process's segment; it is removed when everything in it is stored. Returns True
        when nothing was left for a replay."""
        self._closed.set()
        with self.lock:
            segment, self._segment = self._segment, None
        if segment is None:
            return True
        complete = self._stored >= segment.base + segment.size
        try:
            os.fsync(segment.fd)
        except OSError as exc:
            log.warning("could not fsync the journal: %s", describe_os_error(exc, segment.path))
        segment.close(remove=complete)
        return complete

    def _sync_loop(self) -> None:
        while not self._closed.is_set():
            self._dirty.wait(self.fsync_interval_s)
            if self._closed.is_set():
                return
            if not self._dirty.is_set():
                continue
            self._dirty.clear()
            segment = self._segment
            if segment is not None:
                # Closed meanwhile, or the disk failed: appends report the disk's state.
                with contextlib.suppress(OSError, ValueError):
                    os.fsync(segment.fd)
            self._closed.wait(self.fsync_interval_s)

    # --- segments left by processes that are gone

    def adopt_orphans(self, write: WriteRows, *, batch_size: int = 1000) -> int:
        """Replay every segment in the directory that no live process holds, then remove it; return the rows
        replayed. ``write`` raising leaves the segment (and its progress) for a later call."""
        if not self.directory.is_dir():
            return 0
        own = self.segment_path
        total = 0
        for path in sorted(self.directory.glob(f"{self.name}-*{SUFFIX}")):
            if path == own:
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # adopted by another process meanwhile
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its process is alive
                if not path.exists():
                    continue
                total += self._replay_orphan(path, fd, write, batch_size)
                _done_path(path).unlink(missing_ok=True)
                path.unlink(missing_ok=True)
            finally:
                os.close(fd)
        return total

    def _replay_orphan(self, path: Path, fd: int, write: WriteRows, batch_size: int) -> int:
        with os.fdopen(os.dup(fd), "rb") as f:
            replayed, skipped = replay_lines(
                f,
                _read_done(path),
                write,
                batch_size=batch_size,
                progress=lambda offset: _write_done(path, offset),
                where=f"journal {path}",
            )
        self.skipped_lines += skipped
        return replayed


def _write_done(segment: Path, offset: int) -> None:
    _done_path(segment).write_bytes(b"%020d\n" % offset)


def journal_name(url: str) -> str:
    """The file-name prefix of the journal of database ``url``: ``events-`` and a digest of the URL without its
    password (a SQLite file by its absolute path), so the same database gets the same name from any process."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        parsed = parsed.set(database=str(Path(parsed.database).expanduser().resolve()))
    identity = parsed.set(password=None).render_as_string(hide_password=True)
    return "events-" + hashlib.sha256(identity.encode()).hexdigest()[:12]


class DeadLetters:
    """Rows the database refused for their content, each kept as one JSON line with the reason."""

    def __init__(self, directory: str | os.PathLike[str], name: str = "events") -> None:
        self.path = Path(directory) / f"{name}{DEAD_LETTER_SUFFIX}"

    def add(self, table: str, row: dict[str, Any], reason: str) -> bool:
        """Append one refused row; False when the file cannot be written (the caller logs the row's id)."""
        line = encode(table, {"refused_at": time.time(), "reason": reason, "row": row})
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as f:
                f.write(line)
        except OSError:
            return False
        return True
