"""Fixtures for the orchestrator tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sim_helpers import BASE, run_text


@pytest.fixture
def simulate() -> Callable[..., dict[str, Any]]:
    """Run the small base scenario with overrides; return the single result."""

    def _run(**overrides: object) -> dict[str, Any]:
        docs = run_text(BASE, {k.replace("__", "."): v for k, v in overrides.items()})
        assert len(docs) == 1
        return docs[0]

    return _run
