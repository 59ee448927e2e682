"""The Stripe API behind a small interface: Checkout Sessions and Billing Meter events."""
import stripe


class StripeGateway:
    """ports.StripeAPI over the real stripe library."""

    def __init__(self, api_key: str, api_base: str | None = None, *, timeout: float = 15.0):
        self.client = stripe.StripeClient(
            api_key, base_addresses={"api": api_base} if api_base else None,
            http_client=stripe.HTTPXClient(timeout=timeout), max_network_retries=0)

    async def create_checkout_session(self, *, price_id, tenant_id, plan, email, customer, success_url,
                                      cancel_url) -> str:
        params = {
            "mode": "subscription",
            "line_items": [{"price": price_id, "quantity": 1}],
            "client_reference_id": tenant_id,
            "metadata": {"tenant_id": tenant_id, "plan": plan},
            "subscription_data": {"metadata": {"tenant_id": tenant_id, "plan": plan}},
            "success_url": success_url,
            "cancel_url": cancel_url,
        }
        if customer:  # a plan change: the tenant's own customer pays (Stripe takes one or the other)
            params["customer"] = customer
        elif email:
            params["customer_email"] = email
        session = await self.client.v1.checkout.sessions.create_async(params)
        return session.url

    async def send_meter_event(self, *, event_name, identifier, customer, value, timestamp) -> None:
        await self.client.v1.billing.meter_events.create_async({
            "event_name": event_name,
            "identifier": identifier,
            "payload": {"stripe_customer_id": customer, "value": str(value)},
            "timestamp": int(timestamp.timestamp()),
        })
