"""Headless Chromium for the dashboard tests: Debian's `chromium` driven through `chromium-driver`
(selenium), and the helpers the pages' tests share. Without chromium the tests skip; under
CI=true they fail."""
import os
import shutil
from pathlib import Path

import pytest

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # checked in start_browser, so CI fails instead of skipping
    webdriver = None

# Where screenshots go; tests/python/conftest.py points it at the checkout's artifacts/dashboard.
ARTIFACTS = Path("artifacts") / "dashboard"
SIZES = {"wide": (1280, 800), "narrow": (390, 844)}
WAIT_S = 30


def start_browser():
    """A headless Chromium session; skips the test (fails it under CI=true) when chromium,
    chromium-driver or selenium is missing."""
    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    missing = [name for name, ok in (("selenium", webdriver is not None), ("chromium", chromium),
                                     ("chromium-driver", os.path.exists(driver_path))) if not ok]
    if missing:
        message = f"dashboard test needs {', '.join(missing)} (apt-get install chromium chromium-driver; pip selenium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,800", "--disable-gpu"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: selenium-manager must not try to download one.
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return driver


def severe_console_entries(driver) -> list:
    """The browser log's SEVERE entries since the last read."""
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def wait(driver, condition, what, seconds: float = WAIT_S, interval: float = 0.5):
    # A page re-renders while a condition reads it (the rotated key replaces the key field): an
    # element found a moment ago may be detached by the time it is read, so try again.
    return WebDriverWait(driver, seconds, poll_frequency=interval, ignored_exceptions=(StaleElementReferenceException,)).until(
        condition, message=f"timed out waiting for {what}")


def text_of(driver, css):
    """The visible text of every match, read in one script call (the overview redraws every 2 s)."""
    return driver.execute_script("return [...document.querySelectorAll(arguments[0])].map((e) => e.innerText).join(' ')", css)


def viewport(driver, size):
    width, height = SIZES[size]
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": size == "narrow"})


def screenshot(driver, name):
    """Both sizes; on the narrow one the page itself must not scroll sideways (tables scroll inside)."""
    for size in SIZES:
        viewport(driver, size)
        overflow = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"{name} at {size}: the page is {overflow}px wider than the screen"
        driver.save_screenshot(str(ARTIFACTS / f"{name}-{size}.png"))
    viewport(driver, "wide")


def go(driver, hash_path, heading):
    driver.execute_script("location.hash = arguments[0]", hash_path)
    wait(driver, lambda d: heading in text_of(d, "#page h1"), f"the {heading} page")


def press(driver, *keys):
    ActionChains(driver).send_keys(*keys).perform()


def active(driver):
    return driver.switch_to.active_element


def click(driver, css, what):
    """Clicks the element once it is there (the jobs page redraws its rows every 2 s)."""
    def attempt(d):
        d.find_element(By.CSS_SELECTOR, css).click()
        return True
    wait(driver, attempt, what)


def record_fetches(driver):
    """From now on the page keeps the URL of every fetch whose answer has begun (its headers
    came), for `fetched`: an event stream is open once its URL is there."""
    driver.execute_script("""
        if (!window.corralFetched) {
          window.corralFetched = [];
          const original = window.fetch;
          window.fetch = async (...args) => {
            const response = await original(...args);
            window.corralFetched.push(response.url);
            return response;
          };
        }""")


def fetched(driver) -> list:
    """The URLs fetched since `record_fetches`, oldest first."""
    return driver.execute_script("return window.corralFetched || []")


def sign_in(driver, corral):
    """Opens the dashboard of `corral` already signed in with its admin token."""
    driver.get(corral.base + "/ui")
    driver.execute_script("sessionStorage.setItem('corral.adminToken', arguments[0])", corral.admin_token)
