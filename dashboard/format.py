"""Numbers, money, times and durations as the dashboard shows them, in Japanese or English.

Money: yen with no decimals (``¥1,234``), dollars and yuan with two (``$12.34``, ``CN¥12.34``: the ``CN``
keeps yuan apart from yen, which share the ``¥`` sign), rounded half up from the exact ``Decimal``. Times are
shown in the display zone with the zone's abbreviation (``2026-11-22 21:10 JST``). A missing value is ``—``.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

MISSING = "—"
CURRENCY_SIGNS = {"JPY": "¥", "USD": "$", "CNY": "CN¥"}
CURRENCY_PLACES = {"JPY": 0, "USD": 2, "CNY": 2}


def _missing(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, Decimal):
        return value.is_nan()
    if isinstance(value, float):
        return math.isnan(value)
    try:
        return bool(value != value)  # pandas NA / NaT and numpy NaN
    except (TypeError, ValueError):
        return False


def money(amount: Decimal | float | int | None, currency: str) -> str:
    """``¥1,234`` / ``$12.34`` / ``CN¥12.34`` (negative: ``-¥1,234``); other currencies as ``12.34 EUR``."""
    if _missing(amount):
        return MISSING
    value = amount if isinstance(amount, Decimal) else Decimal(str(amount))
    places = CURRENCY_PLACES.get(currency, 2)
    rounded = value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    if rounded == 0:
        rounded = abs(rounded)  # no "-¥0"
    text = f"{abs(rounded):,.{places}f}"
    sign = "-" if rounded < 0 else ""
    symbol = CURRENCY_SIGNS.get(currency)
    return f"{sign}{symbol}{text}" if symbol else f"{sign}{text} {currency}"


def number(value: float | int | Decimal | None, places: int = 0) -> str:
    """``1,234`` (``places`` decimals)."""
    if _missing(value):
        return MISSING
    assert value is not None
    return f"{Decimal(str(value)).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP):,.{places}f}"


def ms(value: float | None) -> str:
    """Milliseconds: ``1,234 ms``."""
    return MISSING if _missing(value) else f"{number(value)} ms"


def per_second(value: float | None) -> str:
    """Output speed: ``56.8 tok/s``."""
    return MISSING if _missing(value) else f"{number(value, 1)} tok/s"


def percent(value: float | None, places: int = 1) -> str:
    """A share as a percentage: 0.1234 -> ``12.3%``."""
    if _missing(value):
        return MISSING
    assert value is not None
    return f"{number(float(value) * 100, places)}%"


def ratio(value: float | None) -> str:
    """A slowdown ratio: 3.128 -> ``×3.13``."""
    return MISSING if _missing(value) else f"×{number(value, 2)}"


def seconds(value: float | None) -> str:
    """A Retry-After value: ``30 s`` (one decimal below 10 s)."""
    if _missing(value):
        return MISSING
    assert value is not None
    return f"{number(value, 1 if value < 10 else 0)} s"


def when(at: datetime | None, zone: ZoneInfo, *, seconds: bool = False) -> str:
    """``2026-11-22 21:10 JST`` in ``zone`` (``21:10:05`` with ``seconds``, where several rows share a minute)."""
    if at is None or _missing(at):
        return MISSING
    local = at.astimezone(zone)
    shown = local.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")
    return f"{shown} {local.tzname() or zone.key}"


def day(at: datetime, zone: ZoneInfo) -> str:
    """``2026-11-22`` in ``zone``."""
    return f"{at.astimezone(zone):%Y-%m-%d}"


def duration(span: timedelta | None, lang: str) -> str:
    """A countdown rounded down to minutes: ``2時間15分`` / ``2 h 15 min``; days shown above a day."""
    if span is None:
        return MISSING
    minutes = max(0, int(span.total_seconds() // 60))
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    if lang == "ja":
        if days:
            return f"{days}日{hours}時間"
        return f"{hours}時間{mins}分" if hours else f"{mins}分"
    if days:
        return f"{days} d {hours} h"
    return f"{hours} h {mins} min" if hours else f"{mins} min"


def zone_label(zone: ZoneInfo, at: datetime) -> str:
    """The zone's abbreviation at ``at`` (``JST``, ``CST``), with its name when they differ: ``CST (Asia/Shanghai)``."""
    abbr = at.astimezone(zone).tzname() or zone.key
    return abbr if abbr == zone.key else f"{abbr} ({zone.key})"
