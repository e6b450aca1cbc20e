"""Shared fixtures of every room: a real etcd server, per-test etcd prefixes, throwaway network
namespaces and a real Kubernetes control plane. Each room's own fixtures are in its folder's
conftest.py (tests/cni, tests/daemon, tests/lab, tests/proxy, ...); helpers that are not
fixtures are in tests/support (imported as ``support``; pytest's ``pythonpath``).

Every namespace a test makes is named ``nwt<pid>-<tag>-<n>`` and removed at teardown, also on
failure. Nothing here touches the root namespace beyond listening on loopback for etcd.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator

import pytest
from netweft.daemon.controlplane import ControlPlane, ControlPlaneError
from netweft.daemon.etcd_process import EtcdProcess
from support.namespaces import NamespaceMaker


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
    maker = NamespaceMaker()
    try:
        yield maker
    finally:
        maker.close()


@pytest.fixture(scope="module")
def module_netns_factory() -> Iterator[Callable[[str], str]]:
    """:func:`netns_factory` for module-scoped fixtures: deleted after the module's tests."""
    _need_root()
    maker = NamespaceMaker()
    try:
        yield maker
    finally:
        maker.close()


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
