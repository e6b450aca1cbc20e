"""The wireguard backend against the real programs: two node namespaces on an underlay bridge,
``wg`` and (this kernel has no WireGuard) ``wireguard-go``, both installed by deploy/setup.sh.

No etcd here: leases are built by hand from each backend's BackendData; the lab tests cover the
daemon and etcd side.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Network
from pathlib import Path

import pytest
from netweft.backends.base import RTPROT_NETWEFT
from netweft.backends.wireguard import WireGuardBackend, WireGuardSettings
from netweft.backends.wireguard_wg import Wg
from netweft.ipam.lease import Lease
from support import underlay
from support.backend_nodes import BackendNode, build_nodes
from support.kernel import ip_out

NETWORK = IPv4Network("10.244.0.0/16")
PSK = "f4i+6UMm6sg3AZcF6FQDwl7lVhQFt1SHMd0BGUR+0Ik="
OTHER_PSK = "Xl0hKk8rB6SJ7q4jyJHcQ0yX2S1S3Ihoe+1HrXkqk2Y="


@pytest.fixture
def make_backend(nodes: list[BackendNode]) -> Iterator[Callable[..., WireGuardBackend]]:
    """``make(node, **settings)``; every backend made is closed (its wireguard-go stopped)
    before the namespaces go."""
    made: list[WireGuardBackend] = []

    def make(node: BackendNode, **kw: object) -> WireGuardBackend:
        kw.setdefault("key_file", str(node.state / "wgkey"))
        be = WireGuardBackend(node.nl, node.side.underlay, WireGuardSettings(**kw),  # type: ignore[arg-type]
                              state_dir=str(node.state), network=NETWORK)
        made.append(be)
        return be

    try:
        yield make
    finally:
        for be in made:
            be.close()


def leases_of(nodes: list[BackendNode], backends: list[WireGuardBackend]) -> list[Lease]:
    return [Lease(n.subnet, n.side.public_ip, "wireguard", b.backend_data(), etcd_lease_id=1)
            for n, b in zip(nodes, backends, strict=True)]


def bring_up(nodes: list[BackendNode], backends: list[WireGuardBackend]) -> list[Lease]:
    leases = leases_of(nodes, backends)
    for be, own in zip(backends, leases, strict=True):
        be.setup(own)
        _changes, errors = be.reconcile(own, leases)
        assert not errors
    return leases


def test_wireguard_userspace_device_peers_and_pods_reach_each_other(
        nodes: list[BackendNode], make_backend: Callable[..., WireGuardBackend]) -> None:
    backends = [make_backend(n, keepalive=25) for n in nodes]
    leases = bring_up(nodes, backends)
    a, b = nodes
    be = backends[0]
    # This kernel has no WireGuard: wireguard-go runs, its socket under the state dir.
    assert be.implementation == "userspace"
    st = be.status()
    assert st["program"] == "wireguard-go" and st["pid"] and st["restarts"] == 0
    assert st["socket"] == str(a.state / "wireguard" / "flannel-wg.sock")
    assert os.path.exists(str(st["socket"]))
    # Flannel's lease data, device, address, MTU (1500 - 60) and one route per peer.
    assert leases[0].backend_data == {"PublicKey": be.public_key, "Port": 51820}
    assert "mtu 1440" in ip_out(a.ns, "link", "show", "flannel-wg")
    assert "inet 10.244.1.0/32" in ip_out(a.ns, "addr", "show", "flannel-wg")
    assert "10.244.2.0/24 dev flannel-wg proto 78" in ip_out(a.ns, "route")
    dump = Wg(a.ns, str(a.state / "wireguard")).dump("flannel-wg")
    assert dump.interface.public_key == be.public_key and dump.interface.listen_port == 51820
    [peer] = dump.peers
    assert peer.public_key == leases[1].backend_data["PublicKey"]
    assert peer.endpoint == "192.0.2.11:51820" and peer.allowed_ips == ("10.244.2.0/24",)
    assert peer.keepalive == 25 and peer.psk is None
    assert underlay.ping(a.ns, "10.244.2.1", src="10.244.1.1")
    assert underlay.ping(b.ns, "10.244.1.1", src="10.244.2.1")
    # A second pass changes nothing.
    changes, errors = be.reconcile(leases[0], leases)
    assert changes.empty and not errors


def test_wireguard_key_file_is_flannel_format_0600_and_kept_across_restarts(
        nodes: list[BackendNode], make_backend: Callable[..., WireGuardBackend]) -> None:
    node = nodes[0]
    first = make_backend(node)
    data = first.backend_data()
    key_file = node.state / "wgkey"
    text = key_file.read_text()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert not text.endswith("\n") and len(text) == 44  # base64 of 32 bytes, as Flannel writes
    again = make_backend(node)
    assert again.backend_data() == data  # same key: peers need no change


def test_wireguard_reconcile_restores_deleted_peer_and_route_and_restarts_wireguard_go(
        nodes: list[BackendNode], make_backend: Callable[..., WireGuardBackend]) -> None:
    backends = [make_backend(n) for n in nodes]
    leases = bring_up(nodes, backends)
    a = nodes[0]
    be = backends[0]
    wg = Wg(a.ns, str(a.state / "wireguard"))
    peer_key = str(leases[1].backend_data["PublicKey"])
    wg.run(["set", "flannel-wg", "peer", peer_key, "remove"])
    subprocess.run(["ip", "-n", a.ns, "route", "del", "10.244.2.0/24"], check=True)
    subprocess.run(["ip", "-n", a.ns, "route", "add", "10.244.99.0/24", "dev", "flannel-wg",
                    "proto", str(RTPROT_NETWEFT)], check=True)
    changes, errors = be.reconcile(leases[0], leases)
    assert not errors
    assert len(changes.add_wg_peers) == 1 and len(changes.add_routes) == 1
    assert [str(r.dst) for r in changes.del_routes] == ["10.244.99.0/24"]
    assert underlay.ping(a.ns, "10.244.2.1", src="10.244.1.1")

    # wireguard-go dies: the device goes with it; setup starts a new one, same key.
    pid = be.go.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while be.device_present() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not be.device_present()
    # Meanwhile pod traffic to other nodes is refused, not sent in clear by the default route.
    assert "unreachable 10.244.0.0/16 proto 78 metric 4242" in ip_out(a.ns, "route")
    got = subprocess.run(["ip", "-n", a.ns, "route", "get", "10.244.2.1"], capture_output=True,
                         text=True)
    assert got.returncode != 0 and "No route to host" in got.stderr
    be.setup(leases[0])
    assert be.go.pid != pid and be.status()["restarts"] == 1
    changes, errors = be.reconcile(leases[0], leases)
    assert not errors and changes.count == 2  # the peer and its route
    assert underlay.ping(a.ns, "10.244.2.1", src="10.244.1.1")


def test_wireguard_key_change_replaces_only_that_peer(
        netns_factory: Callable[[str], str], tmp_path: Path) -> None:
    """Three nodes; node 3 gets a new key: node 1 swaps exactly that peer in one change."""
    nodes = build_nodes(netns_factory, 3, tmp_path)
    backends = []
    try:
        for node in nodes:
            backends.append(WireGuardBackend(node.nl, node.side.underlay, WireGuardSettings(
                key_file=str(node.state / "wgkey")), state_dir=str(node.state)))
        leases = bring_up(nodes, backends)
        old_key = leases[2].backend_data["PublicKey"]
        backends[2].close()
        os.unlink(nodes[2].state / "wgkey")
        backends[2] = WireGuardBackend(nodes[2].nl, nodes[2].side.underlay, WireGuardSettings(
            key_file=str(nodes[2].state / "wgkey")), state_dir=str(nodes[2].state))
        leases = bring_up(nodes[2:], backends[2:]) and leases[:2] + leases_of(
            nodes[2:], backends[2:])
        assert leases[2].backend_data["PublicKey"] != old_key
        handshake_before = Wg(nodes[0].ns, str(nodes[0].state / "wireguard")).dump(
            "flannel-wg").handshakes
        changes, errors = backends[0].reconcile(leases[0], leases)
        assert not errors
        assert [p.public_key for p in changes.del_wg_peers] == [old_key]
        assert [p.public_key for p in changes.add_wg_peers] == [leases[2].backend_data[
            "PublicKey"]]
        assert not changes.add_routes and not changes.del_routes
        backends[2].reconcile(leases[2], leases)
        backends[1].reconcile(leases[1], leases)
        assert underlay.ping(nodes[0].ns, "10.244.3.1", src="10.244.1.1", count=1, timeout=3)
        assert underlay.ping(nodes[0].ns, "10.244.2.1", src="10.244.1.1")
        after = Wg(nodes[0].ns, str(nodes[0].state / "wireguard")).dump("flannel-wg")
        peer2 = str(leases[1].backend_data["PublicKey"])
        assert peer2 in after.handshakes and handshake_before.get(peer2) is not None
    finally:
        for be in backends:
            be.close()
        for node in nodes:
            node.nl.close()


def test_wireguard_psk_mismatch_cannot_talk_and_matching_psk_can(
        nodes: list[BackendNode], make_backend: Callable[..., WireGuardBackend]) -> None:
    a, b = nodes
    backends = [make_backend(a, psk=PSK), make_backend(b, psk=OTHER_PSK)]
    bring_up(nodes, backends)
    assert stat.S_IMODE((a.state / "wireguard" / "psk").stat().st_mode) == 0o600
    assert not underlay.ping(a.ns, "10.244.2.1", src="10.244.1.1", count=2, timeout=2)
    backends[1].close()
    backends = [backends[0], make_backend(b, psk=PSK)]
    bring_up(nodes, backends)
    assert underlay.ping(a.ns, "10.244.2.1", src="10.244.1.1", count=3, timeout=3)
