"""Where sealed profile archives live: one small port, two adapters.

Keys are `<tenant_id>/<profile_id>/<version>`. A save writes a new version and only then
switches the profile to it, so a crash mid-save leaves the old version whole; old versions are
deleted by key once the switch is committed.
"""
import asyncpg


class PostgresBlobs:
    """In warm_pool's own schema (the default: nothing more to run)."""

    def __init__(self, pool: asyncpg.Pool):
        self.pool = pool

    async def put(self, key: str, data: bytes) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute("""
                INSERT INTO profile_blobs (key, data) VALUES ($1, $2)
                ON CONFLICT (key) DO UPDATE SET data = EXCLUDED.data""", key, data)

    async def get(self, key: str) -> bytes | None:
        async with self.pool.acquire() as conn:
            return await conn.fetchval("SELECT data FROM profile_blobs WHERE key = $1", key)

    async def delete(self, keys: list[str]) -> None:
        if keys:
            async with self.pool.acquire() as conn:
                await conn.execute("DELETE FROM profile_blobs WHERE key = ANY($1::text[])", keys)


class S3Blobs:
    """S3-compatible object storage (clusters): aiobotocore, one client for the process."""

    def __init__(self, *, bucket: str, endpoint_url: str | None, region: str, access_key: str | None,
                 secret_key: str | None, prefix: str = "profiles/"):
        self.bucket, self.prefix = bucket, prefix
        self._args = {"endpoint_url": endpoint_url, "region_name": region,
                      "aws_access_key_id": access_key, "aws_secret_access_key": secret_key}
        self._context = None
        self._client = None

    async def _s3(self):
        if self._client is None:
            from aiobotocore.session import get_session
            self._context = get_session().create_client("s3", **self._args)
            self._client = await self._context.__aenter__()
        return self._client

    async def put(self, key: str, data: bytes) -> None:
        await (await self._s3()).put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)

    async def get(self, key: str) -> bytes | None:
        s3 = await self._s3()
        try:
            response = await s3.get_object(Bucket=self.bucket, Key=self.prefix + key)
        except s3.exceptions.NoSuchKey:
            return None
        async with response["Body"] as body:
            return await body.read()

    async def delete(self, keys: list[str]) -> None:
        s3 = await self._s3()
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1,000 keys
            chunk = keys[start:start + 1000]
            await s3.delete_objects(Bucket=self.bucket,
                                    Delete={"Objects": [{"Key": self.prefix + k} for k in chunk], "Quiet": True})

    async def close(self) -> None:
        if self._context is not None:
            await self._context.__aexit__(None, None, None)
            self._context = self._client = None
