"""Shared set-up of the reference-harness tests.

Registers the ``reference`` marker (tests that boot the real kernel under
QEMU; skipped unless ``TIERSIM_REFERENCE=1``) so ``--strict-markers`` accepts
it without a change to the project's pytest configuration.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "reference: boots the real Linux kernel under QEMU (minutes); "
        "runs only with TIERSIM_REFERENCE=1",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("TIERSIM_REFERENCE") == "1":
        return
    skip = pytest.mark.skip(reason="boots Linux under QEMU; set TIERSIM_REFERENCE=1 to run")
    for item in items:
        if item.get_closest_marker("reference") is not None:
            item.add_marker(skip)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private TIERSIM_CACHE, so no test touches the user's cache."""
    root = tmp_path / "cache"
    monkeypatch.setenv("TIERSIM_CACHE", str(root))
    return root / "reference"
