"""genai-prices' price of one model on one day as four per-token rates, when that is all the price is.

``calc_price`` costs ~40-100 µs a call (units registry, validation, decomposition), paid for every recorded
request before its client sees the end. Most GLM prices are four flat rates; for those the cost is plain
arithmetic. A model's rates are used only when its price has no tiers, no time-of-day or context variants, and
they reproduce ``calc_price`` exactly on sample usages; anything else is left to ``calc_price``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

_MILLION = Decimal(1_000_000)
_RATES = ("input_mtok", "cache_read_mtok", "cache_write_mtok", "output_mtok")
# (input, cache reads, cache writes, output): every rate weighs in at least once, and the parts never cancel.
_SAMPLES = ((1000, 0, 0, 100), (1000, 400, 0, 7), (5000, 1000, 300, 999), (123457, 65536, 4097, 31))


@dataclass(frozen=True, slots=True)
class LinearPrice:
    """Per-million-token rates in USD (a missing cache rate is the input rate, as genai-prices bills it)."""

    input: Decimal
    cached: Decimal
    cache_write: Decimal
    output: Decimal
    model: Any  # genai-prices' ModelInfo, for the effective-from day
    model_price: Any

    def cost(self, input_tokens: int, cached: int, cache_write: int, output: int) -> Decimal:
        """The price of a request with these counts (``input_tokens`` includes cache reads and writes)."""
        uncached = input_tokens - cached - cache_write
        return (
            uncached * self.input + cached * self.cached + cache_write * self.cache_write + output * self.output
        ) / _MILLION


_UNSET = object()
_cache: dict[tuple[str, str, date], LinearPrice | None] = {}
_lock = threading.Lock()


def linear_price(genai_provider: str, model: str, at: datetime) -> LinearPrice | None:
    """The flat rates of ``model`` at ``genai_provider`` on ``at``'s UTC day, or None (use ``calc_price``)."""
    day = at.astimezone(UTC).date() if at.tzinfo is not None else at.date()
    key = (genai_provider, model, day)
    found = _cache.get(key, _UNSET)
    if found is _UNSET:
        found = _find(genai_provider, model, day)
        with _lock:
            _cache[key] = found
    return found  # type: ignore[return-value]


def _find(genai_provider: str, model: str, day: date) -> LinearPrice | None:
    from genai_prices import Usage as GenaiUsage
    from genai_prices import calc_price
    from genai_prices.types import ModelPrice, StartDateConstraint, TieredPrices

    at = datetime.combine(day, time(12), UTC)
    try:
        calc = calc_price(
            GenaiUsage(input_tokens=1, output_tokens=1), model, provider_id=genai_provider, genai_request_timestamp=at
        )
    except Exception:
        return None
    info, price = calc.model, calc.model_price
    if getattr(info, "price_variants", None):
        return None
    conditions = info.prices if isinstance(info.prices, list) else []
    if any(c.constraint is not None and not isinstance(c.constraint, StartDateConstraint) for c in conditions):
        return None  # time-of-day or other conditional prices: not one price per day
    if not isinstance(price, ModelPrice):
        return None
    values = {k: v for k, v in price.__dict__.items() if v is not None and not k.startswith("_")}
    if set(values) - set(_RATES) or any(
        isinstance(v, TieredPrices) or not isinstance(v, Decimal) for v in values.values()
    ):
        return None
    base = values.get("input_mtok", Decimal(0))
    linear = LinearPrice(
        input=base,
        cached=values.get("cache_read_mtok", base),
        cache_write=values.get("cache_write_mtok", base),
        output=values.get("output_mtok", Decimal(0)),
        model=info,
        model_price=price,
    )
    for inp, cached, write, out in _SAMPLES:
        usage = GenaiUsage(input_tokens=inp, cache_read_tokens=cached, cache_write_tokens=write, output_tokens=out)
        try:
            expected = calc_price(usage, model, provider_id=genai_provider, genai_request_timestamp=at).total_price
        except Exception:
            return None
        if linear.cost(inp, cached, write, out) != expected:
            return None
    return linear
