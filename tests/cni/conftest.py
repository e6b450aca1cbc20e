"""Fixtures of the CNI plugin's tests: one node (support.cni_harness.CniNode: the plugin
installed into private directories of a node namespace), per test (``node``) or per module
(``module_node``).

A module parametrizes the launcher with ``CNI_LAUNCHERS`` (a subset of ``bash``, ``python``,
``inproc``; see :func:`support.cni_harness.serving`); without it the node has no server and
the test starts one. ``CNI_NODE`` gives further CniNode fields (default: ``ipMasq`` off).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support.cni_harness import CniNode, serving


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    launchers = getattr(metafunc.module, "CNI_LAUNCHERS", None)
    for name in ("node", "module_node"):
        if launchers and name in metafunc.fixturenames:
            metafunc.parametrize(name, launchers, indirect=True,
                                 scope="module" if name == "module_node" else None)


def _node_fields(request: pytest.FixtureRequest) -> dict[str, Any]:
    return {"options": {"ipMasq": False}, **getattr(request.module, "CNI_NODE", {})}


@pytest.fixture
def node(request: pytest.FixtureRequest, netns_factory: Callable[[str], str]) -> Iterator[CniNode]:
    # a world-traversable root (tmp_path is 0700) so that a non-root caller can run the launcher
    root = tempfile.mkdtemp(prefix="nwf-cni-")
    os.chmod(root, 0o755)
    try:
        n = CniNode(netns_factory("cnode"), root, **_node_fields(request))
        with serving(n, getattr(request, "param", None)):
            yield n
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def module_node(request: pytest.FixtureRequest, module_netns_factory: Callable[[str], str],
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[CniNode]:
    n = CniNode(module_netns_factory("cnode"), str(tmp_path_factory.mktemp("cni")),
                **_node_fields(request))
    with serving(n, getattr(request, "param", None)):
        yield n
