"""Dated exchange rates: defaults, manual entries, and the ECB's daily reference feed.

Rates are stored per day as ``base -> JPY`` (USDJPY, CNYJPY); other pairs are crossed through JPY. A
conversion on a day uses that day's rate or the latest before it, and says which rate, day and source it
used; with no stored rate yet it uses the configured defaults (1 USD = 150 JPY, 1 CNY = 21 JPY).
"""

from __future__ import annotations

import bisect
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import cast

import httpx
from sqlalchemy import Engine, Table, select
from sqlalchemy.dialects import postgresql, sqlite

from monitor.errors import FxError
from monitor.models import FxRateRow
from monitor.money import Cost, Currency

PIVOT: Currency = "JPY"
PAIRS: tuple[str, ...] = ("USDJPY", "CNYJPY")
_PAIR = re.compile(r"^(USD|CNY)JPY$")
_RATE_PLACES = Decimal("0.00000001")


@dataclass(frozen=True, slots=True)
class Rate:
    """One stored (or default) rate: 1 ``base`` = ``rate`` JPY on ``day`` (None for a default)."""

    base: Currency
    rate: Decimal
    day: date | None
    source: str

    @property
    def pair(self) -> str:
        """E.g. ``USDJPY``."""
        return f"{self.base}{PIVOT}"

    def describe(self) -> str:
        """E.g. ``USDJPY 151.2 (2026-11-01, manual)``."""
        when = self.day.isoformat() if self.day else "no dated rate yet"
        return f"{self.pair} {self.rate.normalize():f} ({when}, {self.source})"


@dataclass(frozen=True, slots=True)
class Conversion:
    """A converted amount with the rates that made it, so every figure can be traced."""

    original: Cost
    result: Cost
    rate: Decimal
    used: tuple[Rate, ...]

    @property
    def rate_day(self) -> date | None:
        """The (latest) day of the rates used; None when only defaults (or no conversion) were needed."""
        days = [r.day for r in self.used if r.day is not None]
        return max(days) if days else None

    def describe(self) -> str:
        """Human text naming every rate used, e.g. ``USDJPY 151.2 (2026-11-01, manual)``."""
        return "; ".join(r.describe() for r in self.used) or "same currency"


def parse_pair(text: str) -> tuple[Currency, Decimal]:
    """``"USDJPY=151.2"`` -> ("USD", Decimal("151.2")); FxError says what is expected otherwise."""
    name, sep, value = text.partition("=")
    name = name.strip().upper()
    m = _PAIR.match(name)
    if not sep or not m:
        raise FxError(f"{text!r}: expected PAIR=RATE with PAIR one of {', '.join(PAIRS)}, e.g. USDJPY=151.2")
    try:
        rate = Decimal(value.strip())
    except InvalidOperation:
        raise FxError(f"{text!r}: the rate {value.strip()!r} is not a number; expected e.g. USDJPY=151.2") from None
    if not rate.is_finite() or rate <= 0:
        raise FxError(f"{text!r}: the rate must be a positive number")
    base: Currency = "USD" if m.group(1) == "USD" else "CNY"
    return base, rate


class RateBook:
    """All stored rates in memory (one row per pair per day: small), for fast dated lookups."""

    def __init__(self, rates: list[Rate], defaults: Mapping[Currency, Decimal]) -> None:
        self._by_base: dict[Currency, list[Rate]] = {}
        for r in sorted(rates, key=lambda r: (r.base, r.day or date.min)):
            self._by_base.setdefault(r.base, []).append(r)
        self._days = {b: [r.day or date.min for r in rs] for b, rs in self._by_base.items()}
        self._defaults = {b: Rate(b, v, None, "default") for b, v in defaults.items()}

    @classmethod
    def load(cls, engine: Engine, defaults: Mapping[Currency, Decimal] | None = None) -> RateBook:
        """Every rate stored in the database, with ``defaults`` (USD/CNY -> JPY) for days before the first."""
        with engine.connect() as conn:
            rows = conn.execute(select(FxRateRow.day, FxRateRow.base, FxRateRow.rate, FxRateRow.source)).all()
        rates = [Rate(cast(Currency, base), Decimal(rate), day, source) for day, base, rate, source in rows]
        return cls(rates, defaults or default_rates())

    def rate(self, base: Currency, on: date) -> Rate:
        """1 ``base`` in JPY on ``on``: that day's rate, else the latest before it, else the default."""
        if base == PIVOT:
            return Rate(PIVOT, Decimal(1), None, "identity")
        days = self._days.get(base, [])
        i = bisect.bisect_right(days, on)
        if i:
            return self._by_base[base][i - 1]
        if base not in self._defaults:
            raise FxError(f"no exchange rate for {base}{PIVOT} and no default; set one with `glm-monitor fx set`")
        return self._defaults[base]

    def convert(self, cost: Cost, to: Currency, on: date) -> Conversion:
        """``cost`` in currency ``to`` at the rates in force on ``on``."""
        if cost.currency == to:
            return Conversion(cost, cost, Decimal(1), ())
        src = self.rate(cost.currency, on)
        dst = self.rate(to, on)
        factor = src.rate / dst.rate
        used = tuple(r for r in (src, dst) if r.base != PIVOT)
        return Conversion(cost, Cost(cost.amount * factor, to), factor, used)


def default_rates(usd_jpy: Decimal = Decimal(150), cny_jpy: Decimal = Decimal(21)) -> dict[Currency, Decimal]:
    """The fallback rates used before any dated rate is stored."""
    return {"USD": usd_jpy, "CNY": cny_jpy}


def convert(cost: Cost, to: Currency, on: date, *, book: RateBook) -> Conversion:
    """``cost`` converted to ``to`` with the rate of ``on`` (or the latest before it); see ``Conversion``."""
    return book.convert(cost, to, on)


def store_rates(engine: Engine, day: date, rates: Mapping[Currency, Decimal], source: str) -> None:
    """Store (or replace) the rates of ``day``: ``{"USD": 151.2, "CNY": 21.3}`` meaning 1 unit in JPY."""
    now = datetime.now(UTC)
    rows = [
        {
            "day": day,
            "base": base,
            "quote": PIVOT,
            "rate": rate.quantize(_RATE_PLACES),
            "source": source,
            "recorded_at": now,
        }
        for base, rate in rates.items()
    ]
    if not rows:
        return
    table = cast(Table, FxRateRow.__table__)
    insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    stmt = insert(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=["day", "base", "quote"],
        set_={"rate": stmt.excluded.rate, "source": stmt.excluded.source, "recorded_at": stmt.excluded.recorded_at},
    )
    with engine.begin() as conn:
        conn.execute(stmt, rows)


def parse_ecb_daily(xml: bytes) -> tuple[date, dict[Currency, Decimal]]:
    """The day and USD/CNY -> JPY cross rates from the ECB's eurofxref-daily.xml (rates against EUR)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise FxError(f"the ECB feed is not valid XML: {exc}") from None
    day: date | None = None
    per_eur: dict[str, Decimal] = {}
    for el in root.iter():
        if el.tag.endswith("Cube") and "time" in el.attrib:
            try:
                day = date.fromisoformat(el.attrib["time"])
            except ValueError:
                raise FxError(f"the ECB feed has a bad date {el.attrib['time']!r}") from None
        if el.tag.endswith("Cube") and "currency" in el.attrib and "rate" in el.attrib:
            try:
                per_eur[el.attrib["currency"]] = Decimal(el.attrib["rate"])
            except InvalidOperation:
                continue
    missing = [c for c in ("USD", "JPY", "CNY") if c not in per_eur or per_eur[c] <= 0]
    if day is None or missing:
        what = f"currencies {', '.join(missing)}" if missing else "a date"
        raise FxError(f"the ECB feed lacks {what}; expected the eurofxref-daily.xml format")
    jpy = per_eur["JPY"]
    return day, {"USD": jpy / per_eur["USD"], "CNY": jpy / per_eur["CNY"]}


def fetch_daily(engine: Engine, url: str, *, timeout_s: float = 20.0) -> tuple[date, dict[Currency, Decimal]]:
    """Download the daily reference feed at ``url``, store that day's cross rates and return them."""
    try:
        response = httpx.get(url, timeout=timeout_s, follow_redirects=True)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise FxError(f"could not fetch exchange rates from {url}: {exc.__class__.__name__}: {exc}") from None
    day, rates = parse_ecb_daily(response.content)
    store_rates(engine, day, rates, source="ecb")
    return day, rates
