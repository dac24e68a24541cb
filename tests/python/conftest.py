"""Fixtures for the Python tests; the helpers themselves live in the shared harness
(tests/harness/corral_harness), which the benchmark scripts use too."""
import pytest

from corral_harness.corral import *  # noqa: F401,F403  (the tests import helpers from here)
from corral_harness.corral import start_corral, stop_corral


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


def pytest_configure(config):
    config.addinivalue_line("markers", "real_model: needs the real demo model (scripts/get-demo-model.sh); select with -m real_model or leave out with -m 'not real_model'")
