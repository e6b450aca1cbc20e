"""Fixtures of the backends' kernel tests: two nodes on one underlay (support.backend_nodes)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.backend_nodes import BackendNode, build_nodes


@pytest.fixture
def nodes(netns_factory: Callable[[str], str], tmp_path: Path) -> Iterator[list[BackendNode]]:
    out = build_nodes(netns_factory, 2, tmp_path)
    try:
        yield out
    finally:
        for node in out:
            node.nl.close()
