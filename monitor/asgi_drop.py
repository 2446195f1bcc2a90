"""Dropping a client's connection mid-response on purpose, without uvicorn logging it as an error.

The proxy does it when its upstream broke after the response head (so the client sees what it would have seen
directly); the simulator does it for its ``cut`` and ``reset`` failures. Raise a ``DropConnection`` from the
ASGI app after calling ``install_quiet_drop_filter()`` once.
"""

from __future__ import annotations

import logging


class DropConnection(Exception):
    """Raised inside an ASGI app to make uvicorn close the client's connection mid-response."""


class _QuietDrop(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], DropConnection))


def install_quiet_drop_filter() -> None:
    """Keep uvicorn from logging deliberate ``DropConnection``s as application errors (idempotent)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietDrop) for f in logger.filters):
        logger.addFilter(_QuietDrop())
