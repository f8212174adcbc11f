"""Fixtures of the model tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.models.fitting import single_thread


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op torch thread for a module of tiny models (see :func:`tests.models.fitting.single_thread`)."""
    with single_thread():
        yield
