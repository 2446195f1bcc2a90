"""Price rules: the validated shape of one dated price, and the project's own price data file.

A :class:`PriceRule` is what ``monitor/data/prices.toml`` and a config file's ``[[prices]]`` overrides hold.
Rules for one (provider, model) form a timeline by ``effective_from``; :mod:`monitor.pricing` picks the one in
force on a request's UTC day and does the arithmetic.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from datetime import date
from decimal import Decimal
from functools import cache
from importlib import resources
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from monitor.errors import PricingError
from monitor.money import Currency

__all__ = ["DATA_FILE", "PriceRule", "PriceTier", "check_timelines", "load_price_data", "parse_price_data"]

DATA_FILE = "prices.toml"
"""Name of the project's price data file inside the ``monitor.data`` package."""

# A price: exact, finite and not negative (pydantic rejects NaN and infinities for Decimal by default).
PricePerUnit = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]


class PriceTier(BaseModel):
    """Prices for requests up to a size. Bounds are inclusive; an omitted bound does not limit.

    A request uses the first tier of its rule whose bounds it fits. ``cached_input_per_mtok`` omitted means
    cache reads cost the tier's input price.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_input_tokens: int | None = Field(default=None, ge=0)
    max_output_tokens: int | None = Field(default=None, ge=0)
    input_per_mtok: PricePerUnit
    output_per_mtok: PricePerUnit
    cached_input_per_mtok: PricePerUnit | None = None

    def fits(self, input_tokens: int, output_tokens: int) -> bool:
        """Whether a request with these token counts falls in this tier."""
        return (self.max_input_tokens is None or input_tokens <= self.max_input_tokens) and (
            self.max_output_tokens is None or output_tokens <= self.max_output_tokens
        )

    @property
    def is_open(self) -> bool:
        """True when the tier has no bound, so every request fits it."""
        return self.max_input_tokens is None and self.max_output_tokens is None


class PriceRule(BaseModel):
    """One dated price of one model at one provider, in the currency the provider bills.

    Token prices are per 1,000,000 tokens; ``per_image`` is per generated image. A price left out (None) means
    that kind of usage is not billed by this rule, except cache reads and cache writes, which then cost the
    input price. A rule with ``tiers`` sets its input, cached-input and output prices in the tiers only.
    ``provider`` and ``model`` are stored stripped and lower-case (matching is case-insensitive).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str
    model: str
    currency: Currency
    effective_from: date
    input_per_mtok: PricePerUnit | None = None
    cached_input_per_mtok: PricePerUnit | None = None
    cache_write_per_mtok: PricePerUnit | None = None
    output_per_mtok: PricePerUnit | None = None
    per_image: PricePerUnit | None = None
    tiers: tuple[PriceTier, ...] | None = None
    note: str | None = None

    @field_validator("provider", "model")
    @classmethod
    def _normalise_id(cls, value: str) -> str:
        value = value.strip().lower()
        if not value:
            raise ValueError("must not be empty")
        return value

    @field_validator("provider")
    @classmethod
    def _custom_has_name(cls, value: str) -> str:
        if value.startswith("custom:") and not value.removeprefix("custom:").strip():
            raise ValueError("a custom provider is written 'custom:<name>' with a name")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PriceRule:
        if self.tiers is not None:
            if not self.tiers:
                raise ValueError("tiers must not be empty; leave it out for a flat price")
            flat = [
                name
                for name in ("input_per_mtok", "cached_input_per_mtok", "output_per_mtok")
                if getattr(self, name) is not None
            ]
            if flat:
                raise ValueError(f"a tiered rule sets {', '.join(flat)} in its tiers, not beside them")
            if not self.tiers[-1].is_open:
                raise ValueError(
                    "the last tier must have no max_input_tokens and no max_output_tokens, so every request fits"
                )
        elif all(
            getattr(self, name) is None
            for name in (
                "input_per_mtok",
                "cached_input_per_mtok",
                "cache_write_per_mtok",
                "output_per_mtok",
                "per_image",
            )
        ):
            raise ValueError(
                "a price rule needs at least one price: input_per_mtok, cached_input_per_mtok, "
                "cache_write_per_mtok, output_per_mtok, per_image or tiers"
            )
        return self

    def tier_for(self, input_tokens: int, output_tokens: int) -> PriceTier | None:
        """The tier a request of this size pays, or None for an untiered rule."""
        if not self.tiers:
            return None
        for tier in self.tiers:
            if tier.fits(input_tokens, output_tokens):
                return tier
        return self.tiers[-1]  # unreachable: validation makes the last tier open


def parse_price_data(text: str, *, origin: str = DATA_FILE) -> tuple[PriceRule, ...]:
    """Validate a price data document (TOML with ``[[prices]]`` tables) into rules.

    Floats are read as exact decimals. Raises :class:`PricingError` naming ``origin``, the rule's index and
    what is wrong.
    """
    try:
        raw: dict[str, Any] = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise PricingError(f"{origin}: not valid TOML: {exc}") from exc
    unknown = sorted(set(raw) - {"prices"})
    if unknown:
        raise PricingError(f"{origin}: unknown top-level key(s) {', '.join(unknown)}; expected [[prices]] tables")
    items = raw.get("prices", [])
    if not isinstance(items, list):
        raise PricingError(f"{origin}: 'prices' must be an array of tables ([[prices]])")
    rules: list[PriceRule] = []
    for index, item in enumerate(items):
        try:
            rules.append(PriceRule.model_validate(item))
        except ValidationError as exc:
            raise PricingError(f"{origin}: prices[{index}] ({_describe(item)}) is invalid: {exc}") from exc
    return tuple(rules)


@cache
def load_price_data() -> tuple[PriceRule, ...]:
    """The rules in the project's ``monitor/data/prices.toml``, parsed once per process."""
    resource = resources.files("monitor.data").joinpath(DATA_FILE)
    try:
        text = resource.read_text(encoding="utf-8")
    except OSError as exc:
        raise PricingError(f"cannot read the price data file monitor/data/{DATA_FILE}: {exc}") from exc
    return parse_price_data(text, origin=f"monitor/data/{DATA_FILE}")


def _describe(item: object) -> str:
    if isinstance(item, Mapping):
        return f"provider={item.get('provider')!r}, model={item.get('model')!r}"
    return f"a {type(item).__name__}, not a table"


def check_timelines(rules: Sequence[PriceRule], *, origin: str) -> None:
    """Raise :class:`PricingError` if two rules give the same (provider, model) a price on the same day."""
    seen: set[tuple[str, str, date]] = set()
    for rule in rules:
        key = (rule.provider, rule.model, rule.effective_from)
        if key in seen:
            raise PricingError(
                f"{origin}: two prices for provider {rule.provider!r}, model {rule.model!r} both take effect "
                f"on {rule.effective_from.isoformat()}; keep one"
            )
        seen.add(key)
