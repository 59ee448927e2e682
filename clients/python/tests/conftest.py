"""Unit tests of the SDK against httpx.MockTransport: no server, no network, no real waiting."""
import sys
from pathlib import Path

import pytest

# The tests exercise this tree, not whatever copy of the package happens to be installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import sdk_mock  # noqa: E402


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("BROWSERFLEET_API_KEY", raising=False)
    monkeypatch.delenv("BROWSERFLEET_BASE_URL", raising=False)


@pytest.fixture
def server():
    return sdk_mock.Server()
