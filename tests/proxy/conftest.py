"""Fixtures of the proxy's tests: the real-kernel testbed (support.proxy_testbed)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from support.proxy_testbed import Testbed, build


@pytest.fixture
def bed(netns_factory: Callable[[str], str]) -> Iterator[Testbed]:
    """The proxy's testbed (support.proxy_testbed): a node namespace with a bridge, a client
    namespace outside it; pods added by the test. Pod servers are stopped afterwards."""
    testbed = build(netns_factory)
    try:
        yield testbed
    finally:
        testbed.close()
