import os
from pathlib import Path

import pytest

from tests import infra


@pytest.fixture(scope="session")
def pg_server():
    with infra.postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def mq_server():
    with infra.rabbitmq_server() as url:
        yield url


@pytest.fixture(scope="session")
def database_url(pg_server):
    """A database of this test run's own, dropped at the end."""
    with infra.fresh_database(pg_server) as url:
        yield url


@pytest.fixture(scope="session")
def rabbitmq_url(mq_server):
    """A RabbitMQ vhost of this test run's own, deleted at the end."""
    with infra.fresh_vhost(mq_server) as url:
        yield url


@pytest.fixture
def fresh_db(pg_server):
    """A database for one test, for tests that need an empty schema."""
    with infra.fresh_database(pg_server) as url:
        yield url


@pytest.fixture
def fresh_mq(mq_server):
    with infra.fresh_vhost(mq_server) as url:
        yield url


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    path = Path(os.environ.get("TEST_ARTIFACTS", infra.ROOT / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def module_db(pg_server):
    """A database for one test module (a platform shared by that module's tests only)."""
    with infra.fresh_database(pg_server) as url:
        yield url


@pytest.fixture(scope="module")
def module_mq(mq_server):
    with infra.fresh_vhost(mq_server) as url:
        yield url
