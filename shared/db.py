"""Postgres access: one pool per service, on the service's own login, confined to its schema.

Each service owns one schema and connects as its own login role (`bf_<schema>`), the only role
with any privilege on that schema: a service cannot read another service's tables, and as its
login is a member of no other role, no `SET ROLE`/`RESET ROLE` gets it there either. At start-up
an administrative connection creates the login (its password derived from a key the replicas
share, sent to the server only as a SCRAM verifier) and the schema, and is then closed;
migrations run over the login itself. An operator who manages the roles himself gives the
service its own login URL instead. Where the administrative user may not create roles, its
login is used as the service's.
"""
import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

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
    """An administrative DSN (tests, tools) may act as the schema's role; a service login is it."""
    conn = await asyncpg.connect(dsn)
    try:
        return bool(await conn.fetchval("SELECT current_user <> $1 AND pg_has_role(current_user, $1, 'MEMBER')",
                                        role_for(schema)))
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


def login_password(key: str, role: str) -> str:
    """The login's password, derived so that every replica and restart holding `key` agrees."""
    digest = hmac.new(key.encode(), f"browserfleet database login {role}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def scram_verifier(password: str, *, iterations: int = 4096) -> str:
    """What Postgres stores for a SCRAM-SHA-256 password. Sent instead of the password itself,
    so the password never reaches the server's statement logs."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    b64 = base64.b64encode
    return f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}${b64(stored_key).decode()}:{b64(server_key).decode()}"


def with_login(dsn: str, user: str, password: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{quote(user, safe='')}:{quote(password, safe='')}@{host}",
                       parts.path, parts.query, parts.fragment))


_PROCESS_KEY = secrets.token_urlsafe(32)  # only where no key is configured (loopback, tests)


async def prepare(*, schema: str, migrations_dir: Path, admin_dsn: str | None = None, key: str | None = None,
                  own_dsn: str | None = None) -> tuple[str, list[str]]:
    """Start-up: make the service's own login ready and apply its pending migrations over it.

    With `own_dsn` (roles managed by an operator) that login is used as is. Otherwise
    `admin_dsn` creates the login role `bf_<schema>` (password derived from `key`) which owns the
    schema; the administrative connection is closed before this returns.
    Returns the DSN the service runs on and the migration versions applied now."""
    if own_dsn is None:
        own_dsn = await _ensure_login(admin_dsn, schema=schema, key=key or _PROCESS_KEY)
    return own_dsn, await _apply_migrations(own_dsn, schema=schema, migrations_dir=migrations_dir)


async def migrate(dsn: str, *, schema: str, migrations_dir: Path) -> list[str]:
    """For tests and tools holding an administrative DSN: `prepare` with this process's key."""
    return (await prepare(schema=schema, migrations_dir=migrations_dir, admin_dsn=dsn))[1]


async def _apply_migrations(dsn: str, *, schema: str, migrations_dir: Path) -> list[str]:
    """Under an advisory lock, so replicas starting together don't race."""
    conn = await asyncpg.connect(dsn)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", f"browserfleet.migrate.{schema}")
        try:
            # Created at start-up by the administrative connection, or already by the operator.
            if not await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema):
                await conn.execute(f'CREATE SCHEMA "{schema}" AUTHORIZATION CURRENT_USER')
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
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", f"browserfleet.migrate.{schema}")
    finally:
        await conn.close()
    return applied


async def _ensure_login(admin_dsn: str, *, schema: str, key: str) -> str:
    """The login role of `schema`, with the password derived from `key`, owning the schema; its DSN."""
    role = role_for(schema)
    login_dsn = with_login(admin_dsn, role, login_password(key, role))
    conn = await asyncpg.connect(admin_dsn)
    try:
        # Roles and database grants are cluster-wide rows: serialize across schemas too, or
        # services starting at once fail with "tuple concurrently updated".
        await conn.execute("SELECT pg_advisory_lock(hashtext('browserfleet.migrate.roles'))")
        try:
            try:
                await _ensure_role(conn, role, login_dsn, login_password(key, role))
            except asyncpg.InsufficientPrivilegeError:
                log.warning("cannot create role %s; the configured login runs this service", role)
                return admin_dsn
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}" AUTHORIZATION "{role}"')
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext('browserfleet.migrate.roles'))")
    finally:
        await conn.close()
    return login_dsn


_LOGIN = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"


async def _ensure_role(conn: asyncpg.Connection, role: str, login_dsn: str, password: str) -> None:
    for attempt in range(5):
        try:
            row = await conn.fetchrow("SELECT rolcanlogin, rolsuper OR rolcreaterole OR rolcreatedb OR rolbypassrls"
                                      " AS powerful FROM pg_roles WHERE rolname = $1", role)
            if row is None:
                await conn.execute(f"CREATE ROLE \"{role}\" {_LOGIN} PASSWORD '{scram_verifier(password)}'")
            elif not row["rolcanlogin"] or row["powerful"] or not await _login_works(login_dsn):
                # A role of an older release (NOLOGIN), or a password derived from another key. Only
                # a superuser may name SUPERUSER & co. in ALTER ROLE, even to turn them off.
                powers = " NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS" if row["powerful"] else ""
                await conn.execute(f"ALTER ROLE \"{role}\" LOGIN{powers} PASSWORD '{scram_verifier(password)}'")
            if not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
                await conn.execute(f'GRANT "{role}" TO CURRENT_USER')  # to create the schema for it
            database = await conn.fetchval("SELECT current_database()")
            await conn.execute(f'GRANT CONNECT, TEMPORARY ON DATABASE "{database}" TO "{role}"')
            return
        except (asyncpg.DuplicateObjectError, asyncpg.UniqueViolationError):
            continue  # created this very moment for another database on the same server
        except asyncpg.InternalServerError as exc:
            if "concurrently" not in str(exc) or attempt == 4:
                raise


async def _login_works(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
    except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError):
        return False
    await conn.close()
    return True


async def check(pool: asyncpg.Pool) -> bool:
    try:
        async with pool.acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1", timeout=2)
        return True
    except Exception:
        return False
