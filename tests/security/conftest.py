import pytest

from tests.e2e.platform import running_platform


@pytest.fixture(scope="module")
def deployed(module_db, module_mq, tmp_path_factory):
    """The four services as processes, each with the credentials the harness gives it as a
    deployment would (their own database login and RabbitMQ user), on this module's database
    and vhost."""
    with running_platform(module_db, module_mq, tmp_path_factory.mktemp("deployed")) as platform:
        yield platform
