"""Plans and session pricing: pure, shared by every service that needs them."""
import json
import math
from decimal import Decimal
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field


class Limits(BaseModel):
    max_concurrent_sessions: int = Field(ge=0)
    max_session_seconds: int = Field(ge=1)
    prewarm_browsers: int = Field(ge=0)


class Plan(BaseModel):
    name: str
    credits: int = Field(ge=0)
    max_concurrent_sessions: int = Field(ge=0)
    max_session_seconds: int = Field(ge=1)
    prewarm_browsers: int = Field(ge=0)
    session_price: Decimal
    minute_price: Decimal
    included_minutes: int = Field(ge=0)
    stripe_price_id: str | None = None

    @property
    def limits(self) -> Limits:
        return Limits(
            max_concurrent_sessions=self.max_concurrent_sessions,
            max_session_seconds=self.max_session_seconds,
            prewarm_browsers=self.prewarm_browsers,
        )

    def session_cost(self, duration_ms: int) -> Decimal:
        """Session price plus the minute price for every started minute beyond the included ones."""
        started_minutes = math.ceil(max(duration_ms, 0) / 60_000)
        extra = max(started_minutes - self.included_minutes, 0)
        return (self.session_price + self.minute_price * extra).quantize(Decimal("0.000001"))


class UnknownPlan(KeyError):
    pass


@lru_cache(maxsize=8)
def load_plans(path: Path) -> dict[str, Plan]:
    raw = json.loads(Path(path).read_text(), parse_float=Decimal)
    return {name: Plan(name=name, **spec) for name, spec in raw.items()}


def get_plan(path: Path, name: str) -> Plan:
    plans = load_plans(Path(path))
    if name not in plans:
        raise UnknownPlan(name)
    return plans[name]


def plan_limits(path: Path, name: str) -> Limits | None:
    """The plan's limits, or None for a plan this deployment does not know."""
    try:
        return get_plan(path, name).limits
    except UnknownPlan:
        return None
