"""Checkout: who asks (checkout_caller), for which tenant (checkout_tenant), and the Stripe Checkout
Session (start_checkout). Refusals are domain.Refused; http.py turns them into responses."""
import hmac
from dataclasses import dataclass
from uuid import UUID, uuid4

import stripe

from services.billing.domain import Refused
from services.billing.ports import Credentials, CredentialsUnavailable, StripeAPI, UnitOfWork
from shared.plans import Plan


@dataclass(frozen=True)
class Caller:
    """Who asks for a checkout: nobody known, the operator, or a tenant (by its own credential)."""
    admin: bool = False
    tenant_id: UUID | None = None


def is_admin(credential: str | None, admin_token: str) -> bool:
    return bool(credential and admin_token and hmac.compare_digest(credential.encode(), admin_token.encode()))


async def checkout_caller(*, credential: str | None, admin_token: str, credentials: Credentials) -> Caller:
    """Checked before the request body is read: a bad credential is refused whatever the body."""
    if credential is None:
        return Caller()
    if is_admin(credential, admin_token):
        return Caller(admin=True)
    try:
        owner = await credentials.tenant_for(credential) if len(credential) <= 1024 else None
    except CredentialsUnavailable:
        raise Refused("unavailable", "the credential cannot be checked right now; try again") from None
    if owner is None:
        raise Refused("unauthorized", "invalid API key or dashboard sign-in")
    return Caller(tenant_id=owner)


def checkout_tenant(caller: Caller, *, requested: UUID | None) -> UUID:
    """Whose checkout this is. Without a credential: always a new tenant. An existing tenant's
    (a plan change): its own API key or dashboard sign-in, or the admin token."""
    if caller.admin:
        return requested or uuid4()
    if caller.tenant_id is None:
        if requested is not None:
            raise Refused("unauthorized", "a checkout for an existing tenant needs that tenant's "
                                          "API key or dashboard sign-in")
        return uuid4()
    if requested is not None and requested != caller.tenant_id:
        raise Refused("forbidden", "this credential belongs to another tenant")
    return caller.tenant_id


async def start_checkout(*, uow: UnitOfWork, stripe_api: StripeAPI, plans: dict[str, Plan], plan_name: str,
                         tenant_id: UUID, email: str | None, success_url: str, cancel_url: str) -> dict:
    plan = plans.get(plan_name)
    if plan is None or not plan.stripe_price_id:
        raise Refused("invalid_request", f"unknown plan {plan_name!r}")
    async with uow.connect() as tx:
        account = await tx.repo.get_account(tenant_id=tenant_id)
    # A plan change is paid by the tenant's own Stripe customer: its events then pass the binding check.
    customer = account["stripe_customer_id"] if account else None
    try:
        url = await stripe_api.create_checkout_session(
            price_id=plan.stripe_price_id, tenant_id=str(tenant_id), plan=plan.name, email=email,
            customer=customer, success_url=success_url, cancel_url=cancel_url)
    except stripe.StripeError as exc:
        raise Refused("unavailable", f"Stripe: {exc.user_message or type(exc).__name__}") from None
    return {"url": url, "tenant_id": str(tenant_id)}
