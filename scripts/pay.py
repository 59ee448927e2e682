"""Pay for a plan as Stripe would tell billing: a signed checkout.session.completed and invoice.paid.

    .venv/bin/python scripts/pay.py --plan professional [--tenant-id UUID --customer CUS] [--billing-url URL]

Prints the tenant id. A plan change of an existing tenant must come from its own Stripe customer
(`browserfleet tenants show` prints it as billing_stripe_customer_id): billing refuses, and
keeps for the operator, events that would tie a tenant to another customer. Signs with STRIPE_WEBHOOK_SECRET from the environment, else from `.env`
(which `make run` writes).
"""
import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

import httpx
from dotenv import dotenv_values

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests import stripe_fakes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", default="professional")
    parser.add_argument("--tenant-id", default=str(uuid.uuid4()))
    parser.add_argument("--customer", default=f"cus_{uuid.uuid4().hex[:14]}",
                        help="the Stripe customer paying (an existing tenant's own, for a plan change)")
    parser.add_argument("--billing-url", default=os.environ.get("BILLING_URL", "http://127.0.0.1:8001"))
    parser.add_argument("--secret", default=os.environ.get("STRIPE_WEBHOOK_SECRET")
                        or dotenv_values(ROOT / ".env").get("STRIPE_WEBHOOK_SECRET"))
    args = parser.parse_args()
    if not args.secret:
        sys.exit("STRIPE_WEBHOOK_SECRET is not set and .env has none (`make run` writes it)")
    customer, subscription = args.customer, f"sub_{uuid.uuid4().hex[:14]}"
    now = int(time.time())
    events = [
        stripe_fakes.checkout_session_completed(args.tenant_id, args.plan, customer, subscription),
        stripe_fakes.invoice_paid(args.tenant_id, args.plan, customer, subscription, now, now + 30 * 86400),
    ]
    for event in events:
        body = json.dumps(event).encode()
        response = httpx.post(f"{args.billing_url}/webhooks/stripe", content=body, timeout=10,
                              headers={"stripe-signature": stripe_fakes.sign(body, args.secret),
                                       "content-type": "application/json"})
        if response.status_code != 200:
            sys.exit(f"{event['type']}: {response.status_code} {response.text}")
        print(f"sent {event['type']}", file=sys.stderr)
    print(args.tenant_id)


if __name__ == "__main__":
    main()
