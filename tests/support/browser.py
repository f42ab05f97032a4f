"""Debian's Chromium, headless, launched the one way that works on these machines.

Never ``playwright install`` (it downloads a browser and fails offline). Without Chromium the
browser tests skip, unless ``TRAINVITALS_REQUIRE_BROWSER=1`` (``scripts/test`` sets it), where
they fail: CI cannot pass without running them.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "launch", "require_chromium"]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def require_chromium() -> None:
    """Skip (or, when required, fail) the calling test when Chromium or playwright is absent."""
    import pytest

    missing = None
    if not shutil.which(CHROMIUM):
        missing = f"no Chromium at {CHROMIUM} (scripts/install --browser installs it)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "playwright is not installed"
    if missing is None:
        return
    if os.environ.get("TRAINVITALS_REQUIRE_BROWSER") == "1":
        pytest.fail(missing)
    pytest.skip(missing)


def launch(playwright: Any, **options: Any) -> Any:
    """A headless Chromium browser from a ``sync_playwright()`` or ``async_playwright()``."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                      headless=True, **options)
