"""The line format events take on disk (JSON, exact datetimes and Decimals), the replay of such lines in
batches, and the spool file of versions before the journal (``Spool``: replayed once at start when one is left).

``monitor.journal`` writes and replays the same lines; replays are idempotent (every row has its ``event_id``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO

log = logging.getLogger(__name__)

Rows = list[dict[str, Any]]
WriteRows = Callable[[str, Rows], None]


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$dt": value.isoformat()}
    if isinstance(value, Decimal):
        return {"$dec": str(value)}
    raise TypeError(f"cannot spool a {type(value).__name__}")


def _hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1:
        if "$dt" in obj:
            return datetime.fromisoformat(obj["$dt"])
        if "$dec" in obj:
            return Decimal(obj["$dec"])
    return obj


# Made once: json.dumps with any option builds a new encoder per call, a third of a line's cost.
_ENCODER = json.JSONEncoder(default=_default, separators=(",", ":"))


def encode(table: str, row: Mapping[str, Any]) -> bytes:
    """One spool line for ``row`` of ``table`` (exact: datetimes keep their offset, Decimals their digits)."""
    return _ENCODER.encode({"t": table, "r": row}).encode() + b"\n"


def decode(line: bytes) -> tuple[str, dict[str, Any]]:
    """The table and row of one spool line; ValueError for a line that is not one."""
    obj = json.loads(line, object_hook=_hook)
    if not isinstance(obj, dict) or not isinstance(obj.get("t"), str) or not isinstance(obj.get("r"), dict):
        raise ValueError("not a spool line")
    return obj["t"], obj["r"]


def replay_lines(
    f: BinaryIO, start: int, write: WriteRows, *, batch_size: int, progress: Callable[[int], None], where: str
) -> tuple[int, int]:
    """Write the rows of ``f``'s lines from offset ``start`` through ``write(table, rows)``, in batches of one
    table; ``progress(offset)`` after each batch but the last. Returns (rows replayed, unreadable lines skipped).

    ``write`` raising stops the replay where it is (the caller keeps what ``progress`` was told)."""
    f.seek(start)
    replayed = skipped = 0
    table: str | None = None
    batch: Rows = []
    position = start
    for line in f:
        position += len(line)
        try:
            t, row = decode(line)
        except ValueError:
            skipped += 1
            log.warning("skipped an unreadable line in %s (a torn write after a crash?)", where)
            continue
        if batch and (t != table or len(batch) >= batch_size):
            assert table is not None
            write(table, batch)
            replayed += len(batch)
            progress(position - len(line))
            batch = []
        table = t
        batch.append(row)
    if batch:
        assert table is not None
        write(table, batch)
        replayed += len(batch)
    return replayed, skipped


class Spool:
    """The spool at ``path`` (created on first append)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.offset_path = self.path.with_name(self.path.name + ".offset")
        self.skipped_lines = 0

    @contextmanager
    def _locked(self, mode: str) -> Iterator[BinaryIO]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, mode) as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield f  # type: ignore[misc]
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def append(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append ``rows`` and fsync, so they survive a crash of this process or the machine."""
        if not rows:
            return
        data = b"".join(encode(table, r) for r in rows)
        with self._locked("ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def pending_bytes(self) -> int:
        """How many bytes wait to be replayed (0: nothing spooled)."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return 0
        return max(0, size - self._offset())

    def _offset(self) -> int:
        try:
            return int(self.offset_path.read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def replay(self, write: WriteRows, *, batch_size: int = 1000) -> int:
        """Write every spooled row, in order, through ``write(table, rows)``; return how many were replayed.

        ``write`` raising stops the replay (the rows stay spooled, progress is kept); the caller retries later.
        When everything is written the spool is emptied. Lines that cannot be read (a torn last line after a
        crash) are skipped and counted in ``skipped_lines``.
        """
        if not self.path.exists():
            return 0
        with self._locked("r+b") as f:
            replayed, skipped = replay_lines(
                f, self._offset(), write, batch_size=batch_size, progress=self._save_offset, where=f"spool {self.path}"
            )
            self.skipped_lines += skipped
            f.truncate(0)
            f.flush()
            os.fsync(f.fileno())
            self.offset_path.unlink(missing_ok=True)
        return replayed

    def _save_offset(self, offset: int) -> None:
        self.offset_path.write_text(str(offset))
