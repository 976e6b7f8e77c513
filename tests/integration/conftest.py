"""Fixtures for tests that drive a real bangerd on a real socket with the real CLI."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from banger.testing.daemon import Home


@pytest.fixture
def home() -> Iterator[Home]:
    h = Home()
    try:
        yield h
    finally:
        h.cleanup()
