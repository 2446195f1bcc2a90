"""Money as ``Decimal`` with its currency; never a bare float."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, get_args

Currency = Literal["USD", "JPY", "CNY"]
CURRENCIES: tuple[Currency, ...] = get_args(Currency)


@dataclass(frozen=True, slots=True)
class Cost:
    """An amount of money in one currency. ``amount`` is exact (``Decimal``), never rounded here."""

    amount: Decimal
    currency: Currency

    def __post_init__(self) -> None:
        if not isinstance(self.amount, Decimal):
            raise TypeError(f"Cost.amount must be a Decimal, got {type(self.amount).__name__}")
        if self.currency not in CURRENCIES:
            raise ValueError(f"unknown currency {self.currency!r}; expected one of {', '.join(CURRENCIES)}")

    def __add__(self, other: Cost) -> Cost:
        if other.currency != self.currency:
            raise ValueError(f"cannot add {other.currency} to {self.currency}; convert first")
        return Cost(self.amount + other.amount, self.currency)

    def __str__(self) -> str:
        return f"{self.currency} {self.amount}"
