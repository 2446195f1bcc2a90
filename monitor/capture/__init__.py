"""Capture: record the GLM traffic of real applications, through an httpx transport or a reverse proxy.

``httpx2_client(app=...)`` / ``httpx_client(app=...)`` (and their async twins) give an SDK an HTTP client that
records every request to a known provider; see :mod:`monitor.capture.transport`. The shared recording core is
:mod:`monitor.capture.recorder`.
"""

from __future__ import annotations

from monitor.capture.recorder import RecorderStats, Sink
from monitor.capture.transport import (
    APP_HEADER,
    AsyncRecordingTransport,
    Recorder,
    RecordingTransport,
    async_httpx2_client,
    async_httpx2_transport,
    async_httpx_client,
    httpx2_client,
    httpx2_transport,
    httpx_client,
)

__all__ = [
    "APP_HEADER",
    "AsyncRecordingTransport",
    "Recorder",
    "RecorderStats",
    "RecordingTransport",
    "Sink",
    "async_httpx2_client",
    "async_httpx2_transport",
    "async_httpx_client",
    "httpx2_client",
    "httpx2_transport",
    "httpx_client",
]
