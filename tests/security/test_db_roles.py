"""Issue 15, item 7 (database): each service's schema is its own, whatever code runs in it.

The attacker has the sessions service's database connection (an SQL injection, a bug, a
dependency gone bad) and wants billing's ledger. The services run as processes here; what
each one connects as is read off the server (pg_stat_activity), and the attacks use exactly
that login.
"""
import subprocess
import sys
import uuid

import asyncpg
import pytest

from shared import db
from tests import infra
from tests.helpers import eventually

SCHEMAS = ("billing", "provisioner", "sessions", "warm_pool")


async def service_logins(database_url: str) -> dict[str, set[str]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT application_name, usename FROM pg_stat_activity"
                                " WHERE datname = current_database() AND application_name LIKE 'browserfleet-%'")
    finally:
        await conn.close()
    found: dict[str, set[str]] = {}
    for row in rows:
        found.setdefault(row["application_name"].removeprefix("browserfleet-"), set()).add(row["usename"])
    return found


async def connect_as_service(deployed, schema: str) -> asyncpg.Connection:
    """The login the running service uses, with the password it was given."""
    (user,) = (await service_logins(deployed.database_url))[schema]
    password = db.login_password(infra.SECRETS["DATABASE_ROLE_SECRET"], user)
    return await asyncpg.connect(db.with_login(deployed.database_url, user, password))


async def test_each_service_pool_runs_on_its_own_login(deployed):
    logins = await eventually(lambda: _all_four(deployed), what="every service's pool connected")
    assert logins == {s: {db.role_for(s)} for s in SCHEMAS}
    admin = await asyncpg.connect(deployed.database_url)
    try:
        for schema in SCHEMAS:
            role = await admin.fetchrow("SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolpassword"
                                        " FROM pg_authid WHERE rolname = $1", db.role_for(schema))
            assert not any(role[k] for k in ("rolsuper", "rolcreaterole", "rolcreatedb", "rolbypassrls"))
            assert role["rolpassword"].startswith("SCRAM-SHA-256$")  # a password, stored hashed
            member_of = await admin.fetch("SELECT roleid::regrole::text AS r FROM pg_auth_members"
                                          " WHERE member = $1::regrole", db.role_for(schema))
            assert member_of == []  # nothing to SET ROLE to
    finally:
        await admin.close()
    conn = await connect_as_service(deployed, "sessions")
    try:
        assert await conn.fetchval("SELECT current_user = session_user AND session_user = 'bf_sessions'")
    finally:
        await conn.close()


async def _all_four(deployed):
    logins = await service_logins(deployed.database_url)
    return logins if set(logins) >= set(SCHEMAS) else None


async def test_the_sessions_login_cannot_read_or_write_billing(deployed):
    admin = await asyncpg.connect(deployed.database_url)
    try:
        tables = [r["tablename"] for r in await admin.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'billing'")]
    finally:
        await admin.close()
    assert {"accounts", "ledger", "outbox"} <= set(tables)
    conn = await connect_as_service(deployed, "sessions")
    try:
        for table in tables:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await conn.fetch(f"SELECT * FROM billing.{table} LIMIT 1")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):  # forging billing's events
            await conn.execute("INSERT INTO billing.outbox (id, routing_key, body) VALUES ($1, 'billing.payment_verified', '{}')",
                               uuid.uuid4())
        assert await conn.fetchval("SELECT count(*) FROM sessions.schema_migrations") > 0  # its own: yes
    finally:
        await conn.close()


@pytest.mark.parametrize("escape", ["RESET ROLE", "SET ROLE bf_billing", "SET ROLE postgres",
                                    "SET SESSION AUTHORIZATION postgres", "SET ROLE NONE"])
async def test_no_role_switch_gets_the_sessions_login_into_billing(deployed, escape):
    conn = await connect_as_service(deployed, "sessions")
    try:
        try:
            await conn.execute(escape)
        except asyncpg.InsufficientPrivilegeError:
            pass  # refused outright
        assert await conn.fetchval("SELECT current_user") == "bf_sessions"
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.fetch("SELECT * FROM billing.ledger LIMIT 1")
    finally:
        await conn.close()


def test_no_database_password_in_the_logs(deployed):
    for schema in SCHEMAS:
        password = db.login_password(infra.SECRETS["DATABASE_ROLE_SECRET"], db.role_for(schema))
        for log in deployed.logs.iterdir():
            assert password not in log.read_text(errors="replace"), log


async def test_an_operator_managed_login_is_used_as_is(fresh_db, fresh_mq, tmp_path):
    """SESSIONS_DATABASE_URL: roles managed by the operator; the service needs no administrative
    connection (DATABASE_URL points nowhere) and runs on that login."""
    role = f"op_sessions_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(fresh_db)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN PASSWORD \'{db.scram_verifier("op-password-1234567")}\'')
        await admin.execute(f'CREATE SCHEMA sessions AUTHORIZATION "{role}"')
        await admin.execute(f'GRANT CONNECT ON DATABASE "{fresh_db.rsplit("/", 1)[1]}" TO "{role}"')
    finally:
        await admin.close()
    own = db.with_login(fresh_db, role, "op-password-1234567")
    proc = infra.ServiceProcess("sessions", {"DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none",
                                             "SESSIONS_DATABASE_URL": own, "RABBITMQ_URL": fresh_mq,
                                             "HTTP_PORT": str(infra.free_port())}, tmp_path).start()
    try:
        proc.wait_ready()
        assert (await service_logins(fresh_db))["sessions"] == {role}
    finally:
        assert proc.stop() == 0
        admin = await asyncpg.connect(fresh_db)
        try:
            await admin.execute("DROP SCHEMA sessions CASCADE")
            await admin.execute(f'REVOKE ALL ON DATABASE "{fresh_db.rsplit("/", 1)[1]}" FROM "{role}"')
            await admin.execute(f'DROP ROLE "{role}"')
        finally:
            await admin.close()


async def test_an_administrative_login_that_is_no_superuser_sets_up_the_service_login(pg_server, tmp_path):
    """As on a managed Postgres (the Kubernetes manifests' CloudNativePG owner has CREATEROLE
    only), and over a role an older release made NOLOGIN."""
    tag = uuid.uuid4().hex[:8]
    admin_role, schema, database = f"bf_admin_{tag}", f"scratch_{tag}", f"bf_test_admin_{tag}"
    root = await asyncpg.connect(infra.with_path(pg_server, "/postgres"))
    try:
        await root.execute(f'CREATE ROLE "{admin_role}" LOGIN CREATEROLE')
        await root.execute(f'CREATE DATABASE "{database}" OWNER "{admin_role}"')
        await root.execute(f'CREATE ROLE "{db.role_for(schema)}" NOLOGIN')  # the older release's
        admin_dsn = db.with_login(infra.with_path(pg_server, f"/{database}"), admin_role, "unused-with-trust")
        (tmp_path / "0001.sql").write_text("CREATE TABLE things (id int PRIMARY KEY);")
        for _ in range(2):  # a restart finds everything in place
            login, _ = await db.prepare(schema=schema, migrations_dir=tmp_path, admin_dsn=admin_dsn, key="k" * 32)
        conn = await asyncpg.connect(login)
        try:
            assert await conn.fetchval("SELECT session_user") == db.role_for(schema)
            assert await conn.fetchval(f"SELECT count(*) FROM {schema}.things") == 0
            assert await conn.fetchval("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = $1",
                                       schema) == db.role_for(schema)
        finally:
            await conn.close()
    finally:
        await root.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await root.execute(f'DROP ROLE IF EXISTS "{db.role_for(schema)}"')
        await root.execute(f'DROP ROLE IF EXISTS "{admin_role}"')
        await root.close()
