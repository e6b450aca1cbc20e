"""Shared fixtures: a real etcd server, per-test etcd prefixes, and throwaway network namespaces.

Every namespace a test makes is named ``nwt<pid>-<tag>-<n>`` and removed at teardown, also on
failure. Nothing here touches the root namespace beyond listening on loopback for etcd.
"""

from __future__ import annotations

import itertools
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from netweft.daemon import netns
from netweft.daemon.controlplane import ControlPlane, ControlPlaneError
from netweft.daemon.etcd_process import EtcdProcess
from support.nodelab import NodeLab

_counter = itertools.count()


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdProcess]:
    """One etcd for the whole session, on free loopback ports; tests isolate by prefix."""
    if shutil.which("etcd") is None:
        pytest.fail("etcd is not installed: run deploy/setup.sh (apt-get install etcd-server)")
    server = EtcdProcess().start()
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def etcd_factory() -> Iterator[Callable[[], EtcdProcess]]:
    """Private etcd servers for tests that stop, restart or compact them."""
    made: list[EtcdProcess] = []

    def make() -> EtcdProcess:
        server = EtcdProcess().start()
        made.append(server)
        return server

    try:
        yield make
    finally:
        for server in made:
            server.remove()


@pytest.fixture
def etcd_endpoint(etcd_server: EtcdProcess) -> str:
    return etcd_server.endpoint


@pytest.fixture
def etcd_prefix() -> str:
    """A fresh key prefix per test, so tests sharing the session etcd never see each other."""
    return f"/netweft-test/{uuid.uuid4().hex[:12]}/network"


@pytest.fixture
def netns_factory() -> Iterator[Callable[[str], str]]:
    """``make(tag)`` creates namespace ``nwt<pid>-<tag>-<n>`` (lo up), deleted afterwards."""
    _need_root()
    made: list[str] = []

    def make(tag: str = "ns") -> str:
        name = f"nwt{os.getpid() % 100000}-{tag}-{next(_counter)}"[:40]
        netns.add(name)
        made.append(name)
        return name

    try:
        yield make
    finally:
        for name in reversed(made):
            netns.delete(name)


@pytest.fixture
def make_lab(netns_factory: Callable[[str], str], tmp_path) -> Iterator[Callable[..., NodeLab]]:
    """``make(nodes, backend)``: a NodeLab (etcd, underlay, outside host, node namespaces)
    with the network config set (vxlan unless ``backend`` says otherwise); closed afterwards."""
    labs: list[NodeLab] = []

    def make(nodes: int = 2, backend: dict[str, object] | None = None,
             config: bool = True) -> NodeLab:
        lab = NodeLab(netns_factory("dul"), [netns_factory("dn") for _ in range(nodes)],
                      netns_factory("dout"), str(tmp_path))
        labs.append(lab)
        lab.build()
        if config:
            lab.set_config({"Network": "10.244.0.0/16", "Backend": backend or {"Type": "vxlan"}})
        return lab

    try:
        yield make
    finally:
        for lab in labs:
            lab.close()


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """One real Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager, built
    by deploy/controlplane.sh) on free loopback ports for the session; tests isolate by
    namespace. Fails (not skips) when the control plane was not built."""
    try:
        plane = ControlPlane().start()
    except ControlPlaneError as exc:
        pytest.fail(str(exc))
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture
def control_plane_factory() -> Iterator[Callable[..., ControlPlane]]:
    """Private control planes (``make(**ControlPlane fields)``) for tests that restart or
    reconfigure the apiserver; every process is stopped by PID at teardown."""
    made: list[ControlPlane] = []

    def make(**kwargs: object) -> ControlPlane:
        plane = ControlPlane(**kwargs)  # type: ignore[arg-type]
        made.append(plane)
        try:
            return plane.start()
        except ControlPlaneError as exc:
            pytest.fail(str(exc))

    try:
        yield make
    finally:
        for plane in made:
            plane.stop()


@pytest.fixture
def bed(netns_factory: Callable[[str], str]) -> Iterator[Any]:
    """The proxy's testbed (support.proxy_testbed): a node namespace with a bridge, a client
    namespace outside it; pods added by the test. Pod servers are stopped afterwards."""
    from support.proxy_testbed import build
    testbed = build(netns_factory)
    try:
        yield testbed
    finally:
        testbed.close()
