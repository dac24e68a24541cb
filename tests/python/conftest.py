"""Fixtures for the Python tests in every folder; the helpers themselves live in the shared
harness (tests/harness/corral_harness), which the benchmark scripts use too. Tests import
helpers from the harness (`from corral_harness.corral import start_corral`); the names are
re-exported here for the callers that still import them from conftest."""
from pathlib import Path

import pytest

from corral_harness import browser as browser_harness
from corral_harness.corral import *  # noqa: F401,F403
from corral_harness.corral import start_corral, stop_corral

# Screenshots go to the checkout's artifacts/dashboard, wherever pytest is started from.
browser_harness.ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "dashboard"


@pytest.fixture(scope="module")
def corral():
    c = start_corral()
    yield c
    stop_corral(c)


@pytest.fixture(scope="module")
def admin_corral():
    """A Corral for the module whose `h` holds the admin token's headers."""
    c = start_corral()
    c.h = {"authorization": f"Bearer {c.admin_token}"}
    yield c
    stop_corral(c)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium for the module (skips without chromium; fails under CI=true)."""
    driver = browser_harness.start_browser()
    yield driver
    driver.quit()


@pytest.fixture(autouse=True)
def no_console_errors(request):
    """Every test that drives the browser ends with no SEVERE entry in its console log."""
    yield
    if "browser" in request.fixturenames:
        severe = browser_harness.severe_console_entries(request.getfixturevalue("browser"))
        assert not severe, f"browser console errors: {severe}"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    # Before `-m` deselects: a test that drives the browser is in the browser tier wherever it is.
    for item in items:
        if "browser" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.browser)
