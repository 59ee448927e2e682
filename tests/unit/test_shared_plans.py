from decimal import Decimal
from pathlib import Path

import pytest

from shared.messages import EVENT_TYPES, PaymentVerified, SessionCompleted
from shared.plans import UnknownPlan, get_plan, load_plans
from shared.settings import DEFAULT_PLANS_FILE


def test_built_in_plans_match_the_published_table():
    plans = load_plans(DEFAULT_PLANS_FILE)
    assert {name: (p.credits, p.max_concurrent_sessions, p.max_session_seconds, p.prewarm_browsers)
            for name, p in plans.items()} == {
        "starter": (0, 1, 300, 0),
        "professional": (5000, 50, 3600, 5),
        "enterprise": (50000, 500, 21600, 20),
    }
    assert all(isinstance(p.session_price, Decimal) for p in plans.values())


@pytest.mark.parametrize("duration_ms, cost", [
    (0, "0.01"), (1_000, "0.01"), (300_000, "0.01"),       # within the 5 included minutes
    (300_001, "0.012"), (360_000, "0.012"),                 # the 6th minute has started
    (3_600_000, "0.12"),                                    # 55 extra minutes
])
def test_session_cost_is_decimal_with_started_minutes_beyond_the_included(duration_ms, cost):
    plan = get_plan(DEFAULT_PLANS_FILE, "professional")
    assert plan.session_cost(duration_ms) == Decimal(cost)


def test_operators_can_add_plans_with_a_file(tmp_path: Path):
    path = tmp_path / "plans.json"
    path.write_text('{"team": {"credits": 100, "max_concurrent_sessions": 3, "max_session_seconds": 60,'
                    ' "prewarm_browsers": 1, "session_price": "0.05", "minute_price": "0.01",'
                    ' "included_minutes": 0, "stripe_price_id": "price_team"}}')
    team = get_plan(path, "team")
    assert team.session_cost(61_000) == Decimal("0.07")
    with pytest.raises(UnknownPlan):
        get_plan(path, "professional")


def test_messages_round_trip_with_decimal_money_as_strings():
    event = SessionCompleted(session_id="5f0c7a52-8e57-4a53-9a3e-0d3f1f0c2a11",
                             tenant_id="0b7c3f9e-1c59-4a8e-9d37-3b4c2d1e0f00",
                             started_at="2026-01-01T00:00:00Z", ended_at="2026-01-01T00:01:00Z",
                             duration_ms=60_000, end_reason="client", cost=Decimal("0.01"))
    wire = event.model_dump_json()
    assert '"cost":"0.010000"' in wire and '"type":"sessions.session_completed"' in wire
    assert SessionCompleted.model_validate_json(wire) == event
    assert EVENT_TYPES["billing.payment_verified"] is PaymentVerified
