"""What the filters can offer: every provider, model, vantage and app that has rolled-up figures.

Read from the daily rollups of one kept zone when there is one (``monitor.rollup_days`` keeps each listed zone's
days equal to the sum of its hours, so they name every target the hours do, in a few thousand rows instead of
hundreds of thousands); from the hourly rollups otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from sqlalchemy import Connection, Table, select

from monitor.analytics._base import Db, connect
from monitor.analytics.traffic import REAL_SOURCES
from monitor.models import ProbeDailyRow, ProbeHourlyRow, UsageDailyRow, UsageHourlyRow
from monitor.rollup_days import kept_zones

__all__ = ["Dimensions", "dimensions"]


@dataclass(frozen=True, slots=True)
class Dimensions:
    """Every provider, model and vantage (probes and real traffic) and app (real traffic) with figures, sorted;
    empty names left out."""

    providers: tuple[str, ...]
    models: tuple[str, ...]
    vantages: tuple[str, ...]
    apps: tuple[str, ...]


def _distinct(conn: Connection, table: Table, columns: tuple[str, ...], zone: str | None) -> list[tuple[str, ...]]:
    stmt = select(*(table.c[c] for c in columns)).distinct()
    if zone is not None:
        stmt = stmt.where(table.c.zone == zone)
    if "source" in table.c:
        stmt = stmt.where(table.c.source.in_(REAL_SOURCES))
    return [tuple(row) for row in conn.execute(stmt)]


def dimensions(db: Db) -> Dimensions:
    """The providers, models, vantages and apps of every probe and real (transport or proxy) request rolled up."""
    with connect(db) as conn:
        kept = kept_zones(conn)
        zone = kept[0] if kept else None
        probe_table = ProbeDailyRow.__table__ if zone else ProbeHourlyRow.__table__
        usage_table = UsageDailyRow.__table__ if zone else UsageHourlyRow.__table__
        probes = _distinct(conn, cast(Table, probe_table), ("provider", "model", "vantage"), zone)
        real = _distinct(conn, cast(Table, usage_table), ("provider", "model", "vantage", "app"), zone)

    def values(index: int, rows: list[tuple[str, ...]]) -> tuple[str, ...]:
        return tuple(sorted({str(row[index]) for row in rows if row[index]}))

    return Dimensions(
        providers=values(0, probes + real),
        models=values(1, probes + real),
        vantages=values(2, probes + real),
        apps=values(3, real),
    )
