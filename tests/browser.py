"""Headless Chromium for the browser tests: Debian's chromium and chromium-driver, never a
browser Selenium would download. A test module imports this first: without them it is skipped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
    pytest.skip("browser tests need Debian's chromium and chromium-driver at /usr/bin/chromium and "
                "/usr/bin/chromedriver (install: sh scripts/install-system-deps.sh chromium)",
                allow_module_level=True)

FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage")


def chromium(profile: Path, window: str, capabilities: dict | None = None) -> Iterator[webdriver.Chrome]:
    """A driven Chromium with its own profile folder, quit at the end (use as a fixture body)."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--window-size={window}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    for name, value in (capabilities or {}).items():
        options.set_capability(name, value)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SE_OFFLINE", "true")  # Selenium Manager must not go looking for a driver to download
        driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)),
                                  options=options)
        try:
            yield driver
        finally:
            driver.quit()
