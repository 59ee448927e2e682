"""Money: one type and one JSON format for every amount that leaves a service (HTTP JSON and messages).

An amount is a Decimal in US dollars, written as a string with exactly six decimals ("0.012000",
"12.000000", "-0.500000"): lossless at the precision costs are computed and stored at (Plan.session_cost
quantizes to 0.000001; the `cost` columns are numeric(…, 6)), since a minute can cost a fraction of a
cent. Never a JSON number: clients parse it as a decimal, not a float.
"""
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Annotated

from pydantic import AfterValidator, PlainSerializer, WithJsonSchema

PLACES = 6
QUANTUM = Decimal(1).scaleb(-PLACES)  # 0.000001
PATTERN = r"^-?[0-9]+\.[0-9]{6}$"


def quantize(amount: Decimal) -> Decimal:
    return Decimal(amount).quantize(QUANTUM, rounding=ROUND_HALF_EVEN)


def to_str(amount: Decimal) -> str:
    """The wire format: 0.01 → "0.010000", 12 → "12.000000"."""
    return f"{quantize(amount):f}"


def _finite(amount: Decimal) -> Decimal:
    if not amount.is_finite():
        raise ValueError("an amount of money is a finite decimal")
    return amount


Money = Annotated[
    Decimal,
    AfterValidator(_finite),
    PlainSerializer(to_str, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": PATTERN, "examples": ["0.012000"],
                    "description": "US dollars, a decimal string with exactly 6 decimals"}),
]
