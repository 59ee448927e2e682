import os
from pathlib import Path

import httpx
import pytest

from tests import infra
from tests.e2e.platform import bearer, paying_tenant, running_platform


@pytest.fixture(scope="session")
def pg_server():
    with infra.postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def mq_server():
    with infra.rabbitmq_server() as url:
        yield url


def _fresh_database(scope: str, doc: str):
    @pytest.fixture(scope=scope)
    def fixture(pg_server):
        with infra.fresh_database(pg_server) as url:
            yield url
    fixture.__doc__ = doc
    return fixture


def _fresh_vhost(scope: str, doc: str):
    @pytest.fixture(scope=scope)
    def fixture(mq_server):
        with infra.fresh_vhost(mq_server) as url:
            yield url
    fixture.__doc__ = doc
    return fixture


# A database and a RabbitMQ vhost of their own, removed afterwards, at three scopes:
# the whole run, one test module (a platform shared by that module's tests), one test.
database_url = _fresh_database("session", "A database of this test run's own.")
rabbitmq_url = _fresh_vhost("session", "A RabbitMQ vhost of this test run's own.")
module_db = _fresh_database("module", "A database for one test module.")
module_mq = _fresh_vhost("module", "A RabbitMQ vhost for one test module.")
fresh_db = _fresh_database("function", "A database for one test, for tests that need an empty schema.")
fresh_mq = _fresh_vhost("function", "A RabbitMQ vhost for one test.")


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    path = Path(os.environ.get("TEST_ARTIFACTS", infra.ROOT / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def four_services(module_db, module_mq, tmp_path_factory):
    """All four services as processes on this module's database and vhost. A module that needs
    settings of its own defines a `four_services` of its own."""
    with running_platform(module_db, module_mq, tmp_path_factory.mktemp("four-services")) as running:
        yield running


@pytest.fixture
async def api(four_services):
    """An HTTP client of the sessions API with the API key of a new paying tenant of `four_services`."""
    _, key = await paying_tenant(four_services)
    async with httpx.AsyncClient(base_url=four_services.urls["sessions"], headers=bearer(key), timeout=60) as http:
        yield http
