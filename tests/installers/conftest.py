"""The installer tests build a ~450 MB .deb (about five minutes on two cores), so the main test run
deselects them; `.ci/run` runs them as their own step with OMNIVOX_INSTALLER_TESTS=1."""

from __future__ import annotations

import os

import pytest

if not os.environ.get("DISPLAY"):  # the dialog tests run headless unless a real display is there (xvfb-run)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "installer: builds and installs the Linux packages (own CI step)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("OMNIVOX_INSTALLER_TESTS") == "1":
        return
    deselected = [item for item in items if item.get_closest_marker("installer")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("installer")]
