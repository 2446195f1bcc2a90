"""What one request cost: ``price(provider, model, usage, at) -> Cost | None`` in the provider's currency.

Where prices come from, first match wins:

1. the config's ``[[prices]]`` overrides (source ``config override``);
2. for OpenRouter, what the response says the request was charged (``usage.cost``, USD; source
   ``openrouter usage.cost``): exact for any model and upstream, free variants and BYOK included;
3. the project's data file ``monitor/data/prices.toml`` (``glm-monitor data (...)``): free Flash models,
   BigModel CNY list prices tiered by request size, DashScope, per-image prices;
4. Coding Plan providers (``zai-coding``, ``bigmodel-coding``): 0 in the plan's currency, source
   ``subscription (Coding Plan)``: requests are covered by the plan, whose fee is tracked elsewhere;
5. the genai-prices package (``genai-prices <version> (<its provider>)``) for ``zai``, ``openrouter`` and, in
   USD as genai-prices converts them, ``bigmodel`` models missing from the CNY list.

Each rule has an ``effective_from`` day; a request pays the latest rule of the first source that has one in
force on the request's **UTC** day (naive datetimes are taken as UTC; genai-prices dates its prices the same
way). So an old request keeps its old price, and a source whose first rule starts after the request falls
through to the next.

Arithmetic is exact ``Decimal``, never rounded here: input tokens not read from the cache pay the input price,
cache reads the cached price, cache writes the cache-write price (each falling back to the input price),
output tokens (reasoning included: it is already inside ``output_tokens``) the output price, and images the
per-image price. A usage with no token count and no image count at all (a failed request, a cut stream)
gives None: its cost is unknowable. An unknown model gives None and one warning per (provider, model);
``custom:<name>`` servers without a configured rule give None with one info message.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from functools import cache
from importlib.metadata import version
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from monitor.genai_linear import linear_price
from monitor.money import Cost, Currency
from monitor.price_data import PriceRule, PriceTier, check_timelines, load_price_data
from monitor.providers import BUILTIN_PROVIDERS
from monitor.usage import Usage

if TYPE_CHECKING:
    from genai_prices.types import ModelInfo, ModelPrice

__all__ = ["PriceCatalog", "PriceQuote", "PriceRow", "PriceRule", "PriceTier", "default_catalog", "price"]

logger = logging.getLogger("monitor.pricing")

_MILLION = Decimal(1_000_000)
_ZERO = Decimal(0)

SUBSCRIPTION_SOURCE = "subscription (Coding Plan)"
OVERRIDE_SOURCE = "config override"
DATA_SOURCE = "glm-monitor data"
REPORTED_SOURCE = "openrouter usage.cost"
REPORTED_COST_PROVIDERS = frozenset({"openrouter"})
"""Providers whose responses say what each request was charged (``Usage.reported_cost``, USD): that figure is
the request's cost unless a config override prices the model."""

# Our provider id -> genai-prices provider id. genai-prices' "zhipuai" is open.bigmodel.cn in USD (converted
# from CNY by genai-prices); it is only reached for models the CNY list lacks.
_GENAI_PROVIDERS: dict[str, str] = {"zai": "zai", "bigmodel": "zhipuai", "openrouter": "openrouter"}
# genai-prices lists 900+ OpenRouter models; the catalog listing keeps the GLM ones.
_OPENROUTER_LISTED_PREFIX = "z-ai/"


@dataclass(frozen=True, slots=True)
class PriceQuote:
    """The cost of one request and where its price came from.

    ``effective_from`` is the first day of the price used (None for an undated genai-prices price or a
    subscription); ``rule`` and ``tier`` are set when a project or config rule priced the request.
    """

    cost: Cost
    source: str
    effective_from: date | None
    provider: str
    model: str
    rule: PriceRule | None = None
    tier: PriceTier | None = None


@dataclass(frozen=True, slots=True)
class PriceRow:
    """One line of the catalog in force on a day, for ``glm-monitor prices``.

    Prices are per 1,000,000 tokens (``per_image`` per image) and show what is charged: a cache read or write
    without a price of its own shows the input price. For a tiered rule the columns show its first tier and
    ``tiers`` holds them all. ``model`` is ``*`` for a subscription provider (every model is covered).
    """

    provider: str
    model: str
    currency: Currency
    input_per_mtok: Decimal | None
    cached_input_per_mtok: Decimal | None
    cache_write_per_mtok: Decimal | None
    output_per_mtok: Decimal | None
    per_image: Decimal | None
    effective_from: date | None
    source: str
    tiers: tuple[PriceTier, ...] = ()
    note: str | None = None


@dataclass(frozen=True, slots=True)
class _Counts:
    """Billable quantities of one usage: None read as 0, totals floored at their known parts."""

    input: int  # every prompt token, cache reads and writes included
    cached: int
    cache_write: int
    output: int  # reasoning included
    images: int

    @property
    def uncached_input(self) -> int:
        return self.input - self.cached - self.cache_write


def _counts(usage: Usage) -> _Counts | None:
    """None when the usage reports nothing at all; raises ValueError on a negative count."""
    fields = (
        usage.input_tokens,
        usage.cached_input_tokens,
        usage.cache_write_tokens,
        usage.output_tokens,
        usage.reasoning_tokens,
        usage.images,
    )
    if all(value is None for value in fields):
        return None
    if any(value is not None and value < 0 for value in fields):
        raise ValueError("negative count")
    cached = usage.cached_input_tokens or 0
    cache_write = usage.cache_write_tokens or 0
    # A total below its reported parts is inconsistent; bill the parts rather than a negative remainder.
    return _Counts(
        input=max(usage.input_tokens or 0, cached + cache_write),
        cached=cached,
        cache_write=cache_write,
        output=max(usage.output_tokens or 0, usage.reasoning_tokens or 0),
        images=usage.images or 0,
    )


ACCOUNTING_ZONE = "Asia/Tokyo"
"""The default accounting zone (the default display ``timezone``): price days and exchange-rate days are its days."""


def _noon_utc(day: date) -> datetime:
    """An instant genai-prices reads as ``day`` (its start dates are UTC days)."""
    return datetime.combine(day, time(12), UTC)


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


class _Timeline:
    """Rules of one source indexed by (provider, model), each list sorted by ``effective_from``."""

    def __init__(self, rules: Iterable[PriceRule], *, origin: str) -> None:
        rules = tuple(rules)
        check_timelines(rules, origin=origin)
        grouped: dict[tuple[str, str], list[PriceRule]] = {}
        for rule in rules:
            grouped.setdefault((rule.provider, rule.model), []).append(rule)
        self._rules = {key: sorted(group, key=lambda r: r.effective_from) for key, group in grouped.items()}
        self._days = {key: [r.effective_from for r in group] for key, group in self._rules.items()}

    def in_force(self, provider: str, model: str, day: date) -> PriceRule | None:
        """The latest rule for (provider, model) whose ``effective_from`` is on or before ``day``."""
        days = self._days.get((provider, model))
        if not days:
            return None
        index = bisect_right(days, day)
        return self._rules[(provider, model)][index - 1] if index else None

    def all_in_force(self, day: date) -> list[PriceRule]:
        """For every (provider, model), the rule in force on ``day`` (if any)."""
        found = (self.in_force(provider, model, day) for provider, model in self._rules)
        return [rule for rule in found if rule is not None]


def _subscription_currency(provider: str) -> Currency | None:
    entry = BUILTIN_PROVIDERS.get(provider)
    if entry is not None and entry.billing == "subscription":
        return entry.currency
    return None


@cache
def _genai_version() -> str:
    return version("genai-prices")


def _rule_source(rule: PriceRule, base: str) -> str:
    return f"{base} ({rule.note})" if rule.note else base


def _rule_cost(rule: PriceRule, counts: _Counts) -> tuple[Decimal, PriceTier | None]:
    tier = rule.tier_for(counts.input, counts.output)
    if tier is not None:
        input_rate: Decimal | None = tier.input_per_mtok
        cached_rate = tier.cached_input_per_mtok
        output_rate: Decimal | None = tier.output_per_mtok
    else:
        input_rate, cached_rate, output_rate = rule.input_per_mtok, rule.cached_input_per_mtok, rule.output_per_mtok
    cached_rate = input_rate if cached_rate is None else cached_rate
    write_rate = input_rate if rule.cache_write_per_mtok is None else rule.cache_write_per_mtok
    token_cost = _ZERO
    for tokens, rate in (
        (counts.uncached_input, input_rate),
        (counts.cached, cached_rate),
        (counts.cache_write, write_rate),
        (counts.output, output_rate),
    ):
        if rate is not None and tokens:
            token_cost += tokens * rate
    amount = token_cost / _MILLION
    if rule.per_image is not None and counts.images:
        amount += counts.images * rule.per_image
    return amount, tier


def _rule_row(rule: PriceRule, source: str) -> PriceRow:
    first = rule.tiers[0] if rule.tiers else None
    input_rate = first.input_per_mtok if first else rule.input_per_mtok
    cached = first.cached_input_per_mtok if first else rule.cached_input_per_mtok
    output_rate = first.output_per_mtok if first else rule.output_per_mtok
    return PriceRow(
        provider=rule.provider,
        model=rule.model,
        currency=rule.currency,
        input_per_mtok=input_rate,
        cached_input_per_mtok=input_rate if cached is None else cached,
        cache_write_per_mtok=input_rate if rule.cache_write_per_mtok is None else rule.cache_write_per_mtok,
        output_per_mtok=output_rate,
        per_image=rule.per_image,
        effective_from=rule.effective_from,
        source=source,
        tiers=rule.tiers or (),
        note=rule.note,
    )


def _genai_effective_from(model: ModelInfo, model_price: ModelPrice) -> date | None:
    from genai_prices.types import StartDateConstraint

    if isinstance(model.prices, list):
        for conditional in model.prices:
            if conditional.prices is model_price and isinstance(conditional.constraint, StartDateConstraint):
                return conditional.constraint.start_date
    return None


def _genai_rate(model_price: ModelPrice, key: str) -> Decimal | None:
    from genai_prices.types import TieredPrices

    value = getattr(model_price, key, None)
    if isinstance(value, TieredPrices):
        return value.base
    return value if isinstance(value, Decimal) else None


class PriceCatalog:
    """Prices of GLM requests from config overrides, the project's data file and genai-prices.

    ``data`` defaults to ``monitor/data/prices.toml``. Raises :class:`monitor.errors.PricingError` when two
    rules of one source take effect for the same (provider, model) on the same day.
    """

    def __init__(
        self,
        overrides: Sequence[PriceRule] = (),
        *,
        data: Sequence[PriceRule] | None = None,
        zone: str = ACCOUNTING_ZONE,
    ) -> None:
        self.zone = ZoneInfo(zone)
        self._overrides = _Timeline(overrides, origin="config [[prices]]")
        self._data = _Timeline(load_price_data() if data is None else data, origin="price data")
        self._reported: set[tuple[str, ...]] = set()
        self._lock = threading.Lock()

    def price(self, provider: str, model: str, usage: Usage, at: datetime) -> Cost | None:
        """The cost of one request in its provider's billing currency, or None when it cannot be known."""
        quote = self.quote(provider, model, usage, at)
        return None if quote is None else quote.cost

    def quote(self, provider: str, model: str, usage: Usage, at: datetime) -> PriceQuote | None:
        """Like :meth:`price`, with the source and the rule that priced the request."""
        provider, model = provider.strip().lower(), model.strip().lower()
        try:
            counts = _counts(usage)
        except ValueError:
            self._report(
                logging.WARNING,
                ("negative", provider, model),
                "negative token or image count in the usage of model %r at provider %r: cost left unknown",
                model,
                provider,
            )
            return None
        if counts is None:
            return None
        day = self.accounting_day(at)
        at = _noon_utc(day)  # genai-prices' dates are UTC days: its price of the same accounting day

        rule = self._overrides.in_force(provider, model, day)
        if rule is not None:
            return self._rule_quote(rule, counts, _rule_source(rule, OVERRIDE_SOURCE))
        if usage.reported_cost is not None and provider in REPORTED_COST_PROVIDERS:
            return PriceQuote(Cost(usage.reported_cost, "USD"), REPORTED_SOURCE, None, provider, model)
        rule = self._data.in_force(provider, model, day)
        if rule is not None:
            return self._rule_quote(rule, counts, _rule_source(rule, DATA_SOURCE))
        plan_currency = _subscription_currency(provider)
        if plan_currency is not None:
            return PriceQuote(Cost(_ZERO, plan_currency), SUBSCRIPTION_SOURCE, None, provider, model)
        genai_provider = _GENAI_PROVIDERS.get(provider)
        if genai_provider is not None:
            quote = self._genai_quote(provider, genai_provider, model, counts, at)
            if quote is not None:
                return quote
        if provider.startswith("custom:"):
            self._report(
                logging.INFO,
                ("custom", provider),
                "no price configured for %r: its requests are not priced (a [[prices]] rule can price them)",
                provider,
            )
            return None
        self._report(
            logging.WARNING,
            ("unknown", provider, model),
            "no price known for model %r at provider %r: cost left unknown (a [[prices]] rule can price it)",
            model,
            provider,
        )
        return None

    def accounting_day(self, at: datetime) -> date:
        """The day a request at ``at`` is priced by: its day in the catalog's zone (the display zone), the same
        day its exchange rate is taken from. A naive ``at`` is UTC."""
        return _utc(at).astimezone(self.zone).date()

    def rows(self, at: datetime | date) -> list[PriceRow]:
        """The catalog in force at ``at`` (an instant, or an accounting day): one row per (provider, model) from
        the source that wins, sorted."""
        day = at if not isinstance(at, datetime) else self.accounting_day(at)
        at = _noon_utc(day)
        rows: dict[tuple[str, str], PriceRow] = {}
        for rule in self._overrides.all_in_force(day):
            rows[(rule.provider, rule.model)] = _rule_row(rule, _rule_source(rule, OVERRIDE_SOURCE))
        for rule in self._data.all_in_force(day):
            rows.setdefault((rule.provider, rule.model), _rule_row(rule, _rule_source(rule, DATA_SOURCE)))
        for provider_id, entry in BUILTIN_PROVIDERS.items():
            if entry.billing == "subscription" and entry.currency is not None:
                rows.setdefault((provider_id, "*"), _subscription_row(provider_id, entry.currency))
        for row in self._genai_rows(at, shadowing=set(rows)):
            rows.setdefault((row.provider, row.model), row)
        return [rows[key] for key in sorted(rows)]

    # -- internals ----------------------------------------------------------------------------------------

    def _rule_quote(self, rule: PriceRule, counts: _Counts, source: str) -> PriceQuote:
        amount, tier = _rule_cost(rule, counts)
        return PriceQuote(
            cost=Cost(amount, rule.currency),
            source=source,
            effective_from=rule.effective_from,
            provider=rule.provider,
            model=rule.model,
            rule=rule,
            tier=tier,
        )

    def _genai_quote(
        self, provider: str, genai_provider: str, model: str, counts: _Counts, at: datetime
    ) -> PriceQuote | None:
        from genai_prices import Usage as GenaiUsage
        from genai_prices import calc_price

        suffix = ", USD" if genai_provider == "zhipuai" else ""
        flat = linear_price(genai_provider, model, at) if not counts.images else None
        if flat is not None:  # the same figure calc_price gives (checked per model and day), without its cost
            return PriceQuote(
                cost=Cost(flat.cost(counts.input, counts.cached, counts.cache_write, counts.output), "USD"),
                source=f"genai-prices {_genai_version()} ({genai_provider}{suffix})",
                effective_from=_genai_effective_from(flat.model, flat.model_price),
                provider=provider,
                model=model,
            )
        # genai-prices counts cache reads and writes inside input_tokens, as our Usage does, and bills them at
        # their own price only when the model has one (otherwise at the input price).
        genai_usage = GenaiUsage(
            input_tokens=counts.input,
            cache_read_tokens=counts.cached,
            cache_write_tokens=counts.cache_write,
            output_tokens=counts.output,
        )
        try:
            calc = calc_price(genai_usage, model, provider_id=genai_provider, genai_request_timestamp=at)
        except LookupError:
            return None
        except (ValueError, ArithmeticError) as exc:
            self._report(
                logging.WARNING,
                ("genai", provider, model),
                "genai-prices could not price model %r at provider %r (%s): cost left unknown",
                model,
                provider,
                exc,
            )
            return None
        return PriceQuote(
            cost=Cost(calc.total_price, "USD"),
            source=f"genai-prices {_genai_version()} ({genai_provider}{suffix})",
            effective_from=_genai_effective_from(calc.model, calc.model_price),
            provider=provider,
            model=model,
        )

    def _genai_rows(self, at: datetime, *, shadowing: set[tuple[str, str]]) -> list[PriceRow]:
        from genai_prices import data_snapshot

        genai_by_id = {p.id: p for p in data_snapshot.get_snapshot().providers}
        rows: list[PriceRow] = []
        for provider, genai_provider in _GENAI_PROVIDERS.items():
            entry = genai_by_id.get(genai_provider)
            if entry is None:
                continue
            ours = [model for (p, model) in shadowing if p == provider]
            suffix = ", USD" if genai_provider == "zhipuai" else ""
            source = f"genai-prices {_genai_version()} ({genai_provider}{suffix})"
            for info in entry.models:
                model = info.id.lower()
                if genai_provider == "openrouter" and not model.startswith(_OPENROUTER_LISTED_PREFIX):
                    continue
                if any(info.is_match(name) for name in ours):
                    continue
                model_price = info.get_prices(at)
                input_rate = _genai_rate(model_price, "input_mtok")
                cached = _genai_rate(model_price, "cache_read_mtok")
                write = _genai_rate(model_price, "cache_write_mtok")
                rows.append(
                    PriceRow(
                        provider=provider,
                        model=model,
                        currency="USD",
                        input_per_mtok=input_rate,
                        cached_input_per_mtok=input_rate if cached is None else cached,
                        cache_write_per_mtok=input_rate if write is None else write,
                        output_per_mtok=_genai_rate(model_price, "output_mtok"),
                        per_image=None,
                        effective_from=_genai_effective_from(info, model_price),
                        source=source,
                        note=info.price_comments,
                    )
                )
        return rows

    def _report(self, level: int, key: tuple[str, ...], message: str, *args: object) -> None:
        """Log ``message`` once per ``key`` for the life of this catalog (no spam per request)."""
        with self._lock:
            if key in self._reported:
                return
            self._reported.add(key)
        logger.log(level, message, *args)


def _subscription_row(provider: str, currency: Currency) -> PriceRow:
    return PriceRow(
        provider=provider,
        model="*",
        currency=currency,
        input_per_mtok=_ZERO,
        cached_input_per_mtok=_ZERO,
        cache_write_per_mtok=_ZERO,
        output_per_mtok=_ZERO,
        per_image=_ZERO,
        effective_from=None,
        source=SUBSCRIPTION_SOURCE,
        note="requests are covered by the plan; the plan fee is tracked separately",
    )


@cache
def default_catalog() -> PriceCatalog:
    """The catalog without config overrides, built once per process."""
    return PriceCatalog()


def price(provider: str, model: str, usage: Usage, at: datetime) -> Cost | None:
    """The cost of one request at ``at`` with the default catalog (no config overrides); see the module doc."""
    return default_catalog().price(provider, model, usage, at)
