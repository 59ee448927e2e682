"""Postgres access: one pool per service, confined to the service's own schema and role.

Each service owns one schema. Migrations create the schema and a role of the same name
(`bf_<schema>`), and every pooled connection runs as that role with its schema as search_path,
so a service cannot read another service's tables even by mistake. Where the configured
user may not create roles (a managed database with one login per service), the login itself
is used as is.
"""
import json
import logging
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)
SHARED_MIGRATIONS = Path(__file__).with_name("migrations")


def role_for(schema: str) -> str:
    return f"bf_{schema}"


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", schema="pg_catalog", encoder=_json_dumps, decoder=json.loads)
    await conn.set_type_codec("json", schema="pg_catalog", encoder=_json_dumps, decoder=json.loads)


def _json_dumps(value) -> str:
    return json.dumps(value, default=_json_default)


def _json_default(value):
    if isinstance(value, Decimal):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def is_outage(exc: BaseException) -> bool:
    """A dependency (Postgres, a socket) is down or restarting: retry later, this is not the input's fault."""
    return isinstance(exc, (OSError, TimeoutError, asyncpg.PostgresConnectionError,
                            asyncpg.exceptions.ConnectionDoesNotExistError,
                            asyncpg.exceptions.OperatorInterventionError,
                            asyncpg.exceptions.TooManyConnectionsError))


async def _can_use_role(dsn: str, schema: str) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        return bool(await conn.fetchval("SELECT pg_has_role(current_user, $1, 'MEMBER')", role_for(schema)))
    except asyncpg.PostgresError:
        return False
    finally:
        await conn.close()


async def create_pool(dsn: str, *, schema: str, max_size: int = 10, min_size: int = 1) -> asyncpg.Pool:
    settings = {"search_path": schema, "application_name": f"browserfleet-{schema}"}
    if await _can_use_role(dsn, schema):
        settings["role"] = role_for(schema)
    return await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, server_settings=settings, init=_init_connection,
        command_timeout=30,
    )


@asynccontextmanager
async def transaction(pool: asyncpg.Pool, *, flush: bool = True):
    """`flush=False` commits without waiting for the WAL flush (synchronous_commit off). Only
    for a transaction whose outcome nobody outside hears of before a later flushed commit on
    the same database: that flush covers it, and a crash before it loses nothing promised."""
    async with pool.acquire() as conn:
        async with conn.transaction():
            if not flush:
                await conn.execute("SET LOCAL synchronous_commit TO off")
            yield conn


def _migration_files(*dirs: Path) -> list[tuple[str, Path]]:
    files = []
    for prefix, folder in zip(("shared", "service"), dirs):
        for path in sorted(Path(folder).glob("*.sql")):
            files.append((f"{prefix}/{path.name}", path))
    return files


async def migrate(dsn: str, *, schema: str, migrations_dir: Path) -> list[str]:
    """Create the schema and its role, then apply pending migrations under an advisory lock so
    replicas starting together don't race. Returns the versions applied now."""
    role = role_for(schema)
    conn = await asyncpg.connect(dsn)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", f"browserfleet.migrate.{schema}")
        try:
            # Roles and database grants are cluster-wide rows: serialize across schemas too, or
            # services migrating at once fail with "tuple concurrently updated".
            await conn.execute("SELECT pg_advisory_lock(hashtext('browserfleet.migrate.roles'))")
            try:
                own_role = await _ensure_role(conn, role)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(hashtext('browserfleet.migrate.roles'))")
            owner = role if own_role else "CURRENT_USER"
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}" AUTHORIZATION {owner}')
            if own_role:
                await conn.execute(f'SET ROLE "{role}"')
            await conn.execute(f'SET search_path TO "{schema}"')
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, path in _migration_files(SHARED_MIGRATIONS, migrations_dir):
                if version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(path.read_text())
                    await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
                applied.append(version)
                log.info("migration applied", extra={"schema": schema, "version": version})
        finally:
            await conn.execute("RESET ROLE")
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", f"browserfleet.migrate.{schema}")
    finally:
        await conn.close()
    return applied


async def _ensure_role(conn: asyncpg.Connection, role: str) -> bool:
    """Create the schema's NOLOGIN role and let the current user act as it. False if not allowed."""
    try:
        await conn.execute(
            f"""DO $$ BEGIN
                  CREATE ROLE "{role}" NOLOGIN;
                EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
                END $$"""
        )
        is_super = await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        if not is_super:
            await conn.execute(f'GRANT "{role}" TO CURRENT_USER')
        await conn.execute(f'GRANT CONNECT, TEMPORARY ON DATABASE "{await conn.fetchval("SELECT current_database()")}" TO "{role}"')
        return True
    except asyncpg.InsufficientPrivilegeError:
        log.warning("cannot create role %s; using the configured login for this schema", role)
        return False


async def check(pool: asyncpg.Pool) -> bool:
    try:
        async with pool.acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1", timeout=2)
        return True
    except Exception:
        return False
