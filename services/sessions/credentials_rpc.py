"""The credential RPC: billing asks which tenant an API key or dashboard sign-in belongs to.

billing knows neither API keys nor sign-ins, and reads no other schema: for a plan change it
sends the caller's bearer credential here and is told the tenant (or that it is unknown). The
answer comes from the same verification (and cache) as the sessions API itself.
"""
import logging

from faststream import AckPolicy
from faststream.rabbit import RabbitQueue

from services.sessions.domain import NotFound, Refused
from services.sessions.ports import Credentials
from shared.http import APIError
from shared.messages import CREDENTIALS_QUEUE, CredentialReply, CredentialRequest
from shared.service import Runtime

log = logging.getLogger(__name__)
# A request nobody answered within this long is stale: its caller has given up.
REQUEST_TTL_MS = 10_000


def credentials_queue() -> RabbitQueue:
    return RabbitQueue(CREDENTIALS_QUEUE, durable=True, arguments={"x-message-ttl": REQUEST_TTL_MS})


async def verify(request: CredentialRequest, *, auth: Credentials) -> CredentialReply:
    try:
        return CredentialReply(tenant_id=await auth.tenant_for(request.credential))
    except Refused as exc:
        if exc.code == "unauthorized":
            return CredentialReply(error="unknown")
        log.warning("credential check refused", extra={"code": exc.code})
        return CredentialReply(error="error")
    except (APIError, NotFound) as exc:  # throttled (shared.http's 429)
        log.warning("credential check refused", extra={"error": type(exc).__name__})
        return CredentialReply(error="error")
    except Exception:  # never log the request: it is a credential
        log.exception("credential check failed")
        return CredentialReply(error="error")


def register(runtime: Runtime, *, auth: Credentials) -> None:
    # Competing consumers across replicas; acked on receipt (a lost request times out at the caller).
    @runtime.broker.subscriber(credentials_queue(), ack_policy=AckPolicy.ACK_FIRST)
    async def verify_credential(request: CredentialRequest) -> CredentialReply:
        return await verify(request, auth=auth)
