import pytest

from tests.chromium import Chromium
from tests.e2e.platform import running_platform
from tests.security.confinement import Cdp


@pytest.fixture(scope="module")
def deployed(module_db, module_mq, tmp_path_factory):
    """The four services as processes, each with the credentials the harness gives it as a
    deployment would (their own database login and RabbitMQ user), on this module's database
    and vhost."""
    with running_platform(module_db, module_mq, tmp_path_factory.mktemp("deployed")) as platform:
        yield platform


@pytest.fixture
async def browser():
    """One real Chromium launched as the pool launches its browsers."""
    chromium = await Chromium.launch()
    yield chromium
    await chromium.kill()


@pytest.fixture
async def two_contexts(browser):
    """warm_pool's own connection: two sessions' contexts, each with a first page."""
    cdp = await Cdp.connect(browser.ws_url)
    contexts = {}
    for name in ("a", "b"):
        contexts[name] = (await cdp.ok("Target.createBrowserContext"))["browserContextId"]
        await cdp.ok("Target.createTarget", {"url": "about:blank", "browserContextId": contexts[name]})
    yield cdp, contexts
    await cdp.close()
