"""The latest individual probe results, with their errors (the dashboard's Probes page).

The one analytics function that reads a raw table: a list of single probes cannot come from rollups. It is one
query on the ``(ts)`` / ``(provider, model, ts)`` indexes of ``probe_results``, newest first, with a ``LIMIT``,
so its cost depends on ``limit``, not on how many rows the table holds. Rows older than the retention are pruned,
so the list reaches back at most ``[database] retention_days``.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from sqlalchemy import desc, select

from monitor.analytics._base import Db, Filters, connect, empty
from monitor.models import ProbeResultRow

__all__ = ["PROBE_COLUMNS", "PROBE_LIMIT", "latest_probes"]

PROBE_COLUMNS = (
    "ts",
    "provider",
    "model",
    "vantage",
    "outcome",
    "http_status",
    "error_code",
    "error_message",
    "retry_after_s",
    "ttft_ms",
    "total_ms",
    "tokens_per_s",
)
PROBE_LIMIT = 500


def latest_probes(db: Db, filters: Filters, *, outcomes: Sequence[str] = (), limit: int = PROBE_LIMIT) -> pd.DataFrame:
    """The newest ``limit`` probe results in ``filters`` (newest first), of the given ``outcomes`` only if any.

    Columns ``PROBE_COLUMNS``; ``ts`` is tz-aware UTC; ``error_message`` is stored redacted. Selections of
    providers, models and vantages apply; apps and sources do not (probes have none).
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    t = ProbeResultRow
    stmt = select(*(getattr(t, c) for c in PROBE_COLUMNS)).where(t.ts >= filters.start, t.ts < filters.end)
    for column, values in ((t.provider, filters.providers), (t.model, filters.models), (t.vantage, filters.vantages)):
        if values:
            stmt = stmt.where(column.in_(values))
    if outcomes:
        stmt = stmt.where(t.outcome.in_(list(outcomes)))
    stmt = stmt.order_by(desc(t.ts), desc(t.id)).limit(limit)
    with connect(db) as conn:
        rows = conn.execute(stmt).all()
    if not rows:
        return empty(PROBE_COLUMNS)
    frame = pd.DataFrame.from_records([tuple(r) for r in rows], columns=list(PROBE_COLUMNS))
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame
