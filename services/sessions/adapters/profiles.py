"""The public profile API's operations, asked of warm_pool (which owns profiles) over request/reply."""
from uuid import UUID

from shared.http import APIError
from shared.messages import PROFILES_QUEUE, ProfileReply, ProfileRequest
from shared.rpc import RpcClient, RpcTimeout, RpcUnroutable

ERRORS = {"not_found": (404, "not_found", "profile not found"),
          "profile_in_use": (409, "profile_in_use", "a persisting session of this profile is running"),
          "invalid_cursor": (422, "invalid_request", "invalid cursor"),
          "unavailable": (503, "profiles_unavailable", "profiles are not available on this deployment")}


class ProfilesClient:
    def __init__(self, url: str, *, timeout_s: float):
        self.rpc = RpcClient(url)
        self.timeout_s = timeout_s

    async def __call__(self, op: str, tenant_id: UUID, **fields) -> ProfileReply:
        """The reply of a successful operation; an APIError in the error shape otherwise."""
        request = ProfileRequest(op=op, tenant_id=tenant_id, **fields)
        try:
            reply = await self.rpc.ask(PROFILES_QUEUE, request, ProfileReply, timeout=self.timeout_s)
        except (RpcTimeout, RpcUnroutable, OSError, ConnectionError):
            raise APIError(503, "unavailable", "the profile store did not answer, retry later") from None
        if not reply.ok:
            status, code, message = ERRORS.get(reply.error or "", (503, "unavailable", "profile operation failed"))
            raise APIError(status, code, message)
        return reply

    async def close(self) -> None:
        await self.rpc.close()
