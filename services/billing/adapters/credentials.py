"""Whose credential is this? Asked of the sessions service over the credential RPC queue.

billing holds no API keys or sign-ins: sessions verifies them (see services/sessions/credentials_rpc.py).
"""
from uuid import UUID

from services.billing.ports import CredentialsUnavailable
from shared.messages import CREDENTIALS_QUEUE, CredentialReply, CredentialRequest
from shared.rpc import RpcClient


class CredentialsClient:
    def __init__(self, url: str, *, timeout_s: float):
        self.rpc = RpcClient(url)
        self.timeout_s = timeout_s

    async def tenant_for(self, credential: str) -> UUID | None:
        """The tenant this API key or dashboard sign-in belongs to; None if it is no live credential."""
        try:
            reply = await self.rpc.ask(CREDENTIALS_QUEUE, CredentialRequest(credential=credential), CredentialReply,
                                       timeout=self.timeout_s)
        except Exception as exc:
            raise CredentialsUnavailable(type(exc).__name__) from None
        if reply.error == "unknown":
            return None
        if reply.tenant_id is None:
            raise CredentialsUnavailable(reply.error or "no answer")
        return reply.tenant_id

    async def close(self) -> None:
        await self.rpc.close()
