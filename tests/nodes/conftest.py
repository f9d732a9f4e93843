"""Shared fixtures of the memory-node tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

from node_helpers import Pages
from tiersim.nodes import NodeConfig, node_config


@pytest.fixture
def pages() -> Pages:
    return Pages()


@pytest.fixture
def small_cram() -> NodeConfig:
    """A cram node advertising 4 MiB over 256 KiB of media (64-byte overhead, 2%/5% marks)."""
    return node_config("cram", "4MiB", "256KiB", seed=11)


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """CLI tests configure structlog onto pytest's captured (later closed) stderr."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()
