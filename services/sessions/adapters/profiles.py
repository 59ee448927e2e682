"""The public profile API's operations, asked of warm_pool (which owns profiles) over request/reply."""
from uuid import UUID

from services.sessions.domain import NotFound, Refused
from shared.messages import PROFILES_QUEUE, ProfileReply, ProfileRequest
from shared.rpc import RpcClient, RpcTimeout, RpcUnroutable

REFUSALS = {"profile_in_use": ("profile_in_use", "a persisting session of this profile is running"),
            "invalid_cursor": ("invalid_request", "invalid cursor"),
            "unavailable": ("profiles_unavailable", "profiles are not available on this deployment")}


class ProfilesClient:
    def __init__(self, url: str, *, timeout_s: float):
        self.rpc = RpcClient(url)
        self.timeout_s = timeout_s

    async def __call__(self, op: str, tenant_id: UUID, **fields) -> ProfileReply:
        """The reply of a successful operation; domain.NotFound or domain.Refused otherwise."""
        request = ProfileRequest(op=op, tenant_id=tenant_id, **fields)
        try:
            reply = await self.rpc.ask(PROFILES_QUEUE, request, ProfileReply, timeout=self.timeout_s)
        except (RpcTimeout, RpcUnroutable, OSError, ConnectionError):
            raise Refused("unavailable", "the profile store did not answer, retry later") from None
        if reply.error == "not_found":
            raise NotFound("profile not found")
        if not reply.ok:
            raise Refused(*REFUSALS.get(reply.error or "", ("unavailable", "profile operation failed")))
        return reply

    async def close(self) -> None:
        await self.rpc.close()
