"""The vxlan and host-gw backends against a real kernel: two node namespaces on an underlay bridge.

No etcd here: leases are built by hand; the daemon tests cover the etcd side.
"""

from __future__ import annotations

import subprocess
from ipaddress import IPv4Address, IPv4Network

import pytest
from netweft.backends.base import RTPROT_NETWEFT, BackendError, Changes, Neighbour
from netweft.backends.hostgw import HostGwBackend
from netweft.backends.vxlan import VxlanBackend, VxlanSettings, load_vtep_mac
from netweft.ipam.lease import Lease
from support import underlay
from support.backend_nodes import BackendNode
from support.kernel import ip_out


def vxlan_leases(nodes: list[BackendNode], backends: list[VxlanBackend]) -> list[Lease]:
    return [Lease(n.subnet, n.side.public_ip, "vxlan", b.backend_data(), etcd_lease_id=1)
            for n, b in zip(nodes, backends, strict=True)]


def test_vxlan_programs_peers_and_pods_reach_each_other(nodes: list[BackendNode], tmp_path) -> None:
    backends = [VxlanBackend(n.nl, n.side.underlay, VxlanSettings(vni=1),
                             state_dir=str(tmp_path / n.ns)) for n in nodes]
    leases = vxlan_leases(nodes, backends)
    for be, own in zip(backends, leases, strict=True):
        dev = be.setup(own)
        assert dev.name == "flannel.1" and dev.mtu == 1450
        changes, errors = be.reconcile(own, leases)
        assert not errors and changes.count == 3
    a, b = nodes
    link = ip_out(a.ns, "-d", "link", "show", "flannel.1")
    assert "vxlan id 1 local 192.0.2.10" in link and "nolearning" in link and "dstport 8472" in link
    assert "mtu 1450" in link
    assert "inet 10.244.1.0/32" in ip_out(a.ns, "addr", "show", "flannel.1")
    peer_mac = leases[1].vtep_mac
    assert f"10.244.2.0 lladdr {peer_mac} PERMANENT" in ip_out(a.ns, "neigh", "show", "dev",
                                                                "flannel.1")
    fdb = subprocess.run(["bridge", "-n", a.ns, "fdb", "show", "dev", "flannel.1"],
                         capture_output=True, text=True, check=True).stdout
    assert f"{peer_mac} dst 192.0.2.11 self permanent" in fdb
    assert "10.244.2.0/24 via 10.244.2.0 dev flannel.1 proto 78 onlink" in ip_out(a.ns, "route")
    assert underlay.ping(a.ns, "10.244.2.1", src="10.244.1.1")
    assert underlay.ping(b.ns, "10.244.1.0", src="10.244.2.0")
    # A second pass changes nothing.
    changes, errors = backends[0].reconcile(leases[0], leases)
    assert changes.empty and not errors
    # The MAC is stored and kept.
    assert load_vtep_mac(str(tmp_path / a.ns), 1) == leases[0].vtep_mac


def test_vxlan_reconcile_restores_hand_deleted_entries_and_removes_strays(
        nodes: list[BackendNode], tmp_path) -> None:
    backends = [VxlanBackend(n.nl, n.side.underlay, VxlanSettings(vni=7)) for n in nodes]
    leases = vxlan_leases(nodes, backends)
    for be, own in zip(backends, leases, strict=True):
        be.setup(own)
        be.reconcile(own, leases)
    a = nodes[0]
    be = backends[0]
    peer_mac = str(leases[1].vtep_mac)
    subprocess.run(["ip", "-n", a.ns, "route", "del", "10.244.2.0/24"], check=True)
    subprocess.run(["bridge", "-n", a.ns, "fdb", "del", peer_mac, "dev", "flannel.7",
                    "dst", "192.0.2.11"], check=True)
    # A stray entry: a route with our protocol that no lease backs.
    subprocess.run(["ip", "-n", a.ns, "route", "add", "10.244.99.0/24", "via", "10.244.99.0",
                    "dev", "flannel.7", "onlink", "proto", str(RTPROT_NETWEFT)], check=True)
    # Someone else's route on the same device stays.
    subprocess.run(["ip", "-n", a.ns, "route", "add", "10.250.0.0/24", "dev", "flannel.7"],
                   check=True)
    changes, errors = be.reconcile(leases[0], leases)
    assert not errors
    assert len(changes.add_routes) == 1 and len(changes.add_fdb) == 1
    assert [str(r.dst) for r in changes.del_routes] == ["10.244.99.0/24"]
    routes = ip_out(a.ns, "route")
    assert "10.244.2.0/24 via 10.244.2.0 dev flannel.7" in routes
    assert "10.244.99.0" not in routes and "10.250.0.0/24 dev flannel.7" in routes
    assert underlay.ping(a.ns, "10.244.2.1", src="10.244.1.1")

    # The device itself deleted by hand: setup recreates it with the same MAC.
    subprocess.run(["ip", "-n", a.ns, "link", "del", "flannel.7"], check=True)
    assert not be.device_present()
    dev = be.setup(leases[0])
    assert dev.mac == leases[0].vtep_mac
    changes, errors = be.reconcile(leases[0], leases)
    assert changes.count == 3 and not errors
    assert underlay.ping(a.ns, "10.244.2.1", src="10.244.1.1")


def test_vxlan_removed_lease_removes_its_entries(nodes: list[BackendNode]) -> None:
    backends = [VxlanBackend(n.nl, n.side.underlay, VxlanSettings(vni=1)) for n in nodes]
    leases = vxlan_leases(nodes, backends)
    be = backends[0]
    be.setup(leases[0])
    be.reconcile(leases[0], leases)
    changes, _ = be.reconcile(leases[0], [leases[0]])
    assert changes.count == 3
    a = nodes[0]
    assert "10.244.2.0" not in ip_out(a.ns, "route")
    assert "10.244.2.0" not in ip_out(a.ns, "neigh", "show", "dev", "flannel.1")
    assert "192.0.2.11" not in subprocess.run(["bridge", "-n", a.ns, "fdb", "show", "dev",
                                                "flannel.1"], capture_output=True,
                                               text=True).stdout


def test_vxlan_direct_routing_uses_underlay_routes_for_on_link_peers(
        nodes: list[BackendNode]) -> None:
    backends = [VxlanBackend(n.nl, n.side.underlay, VxlanSettings(vni=1, direct_routing=True))
                for n in nodes]
    leases = vxlan_leases(nodes, backends)
    for be, own in zip(backends, leases, strict=True):
        be.setup(own)
        changes, errors = be.reconcile(own, leases)
        assert changes.count == 1 and not errors
    a = nodes[0]
    assert "10.244.2.0/24 via 192.0.2.11 dev eth0 proto 78" in ip_out(a.ns, "route")
    assert "PERMANENT" not in ip_out(a.ns, "neigh", "show", "dev", "flannel.1")
    assert underlay.ping(a.ns, "10.244.2.1", src="10.244.1.1")


def test_add_and_remove_one_peer(nodes: list[BackendNode]) -> None:
    backends = [VxlanBackend(n.nl, n.side.underlay, VxlanSettings(vni=1)) for n in nodes]
    leases = vxlan_leases(nodes, backends)
    be, own, peer = backends[0], leases[0], leases[1]
    be.setup(own)
    assert be.add_peer(own, peer) == []
    a = nodes[0]
    assert "10.244.2.0/24 via 10.244.2.0 dev flannel.1 proto 78 onlink" in ip_out(a.ns, "route")
    changes, _ = be.reconcile(own, leases)
    assert changes.empty  # add_peer programmed exactly what reconcile wants
    assert be.remove_peer(own, peer) == []
    assert be.remove_peer(own, peer) == []  # already gone: not an error
    assert "10.244.2.0" not in ip_out(a.ns, "route")
    assert "10.244.2.0" not in ip_out(a.ns, "neigh", "show", "dev", "flannel.1")


def test_hostgw_programs_gateway_routes(nodes: list[BackendNode]) -> None:
    backends = [HostGwBackend(n.nl, n.side.underlay) for n in nodes]
    leases = [Lease(n.subnet, n.side.public_ip, "host-gw", {}, etcd_lease_id=1) for n in nodes]
    for be, own in zip(backends, leases, strict=True):
        be.check_peers(own, leases)
        assert be.setup(own).mtu == 1500
        changes, errors = be.reconcile(own, leases)
        assert changes.count == 1 and not errors
    a, b = nodes
    assert "10.244.2.0/24 via 192.0.2.11 dev eth0 proto 78" in ip_out(a.ns, "route")
    assert underlay.ping(a.ns, "10.244.2.1", src="10.244.1.1")
    assert underlay.ping(b.ns, "10.244.1.1", src="10.244.2.1")


def test_hostgw_refuses_a_peer_that_is_not_on_link(nodes: list[BackendNode]) -> None:
    a = nodes[0]
    be = HostGwBackend(a.nl, a.side.underlay)
    own = Lease(a.subnet, a.side.public_ip, "host-gw", {}, etcd_lease_id=1)
    far = Lease(IPv4Network("10.244.9.0/24"), IPv4Address("198.51.100.7"), "host-gw", {},
                etcd_lease_id=2)
    with pytest.raises(BackendError) as err:
        be.check_peers(own, [own, far])
    assert str(err.value).startswith(
        "host-gw: peer 10.244.9.0/24 at 198.51.100.7 is not directly reachable from eth0")
    assert "use the vxlan backend" in str(err.value)


def test_peer_entries_are_applied_and_read_over_netlink_without_starting_processes(
        nodes: list[BackendNode], tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lease event's entries go to the kernel as netlink requests: no ``ip``/``bridge``
    process (one costs ~7 ms to start, most of a join's latency); the full pass reads the
    kernel the same way. Deleting what is already gone is not an error; an entry on a device
    that does not exist is reported by name."""
    be = VxlanBackend(nodes[0].nl, nodes[0].side.underlay, VxlanSettings(vni=1),
                      state_dir=str(tmp_path))
    other = VxlanBackend(nodes[1].nl, nodes[1].side.underlay, VxlanSettings(vni=1),
                         state_dir=str(tmp_path / "b"))
    leases = [Lease(nodes[0].subnet, nodes[0].side.public_ip, "vxlan", be.backend_data(),
                    etcd_lease_id=1),
              Lease(nodes[1].subnet, nodes[1].side.public_ip, "vxlan", other.backend_data(),
                    etcd_lease_id=1)]
    be.setup(leases[0])
    assert nodes[0].nl.rtnl  # opened in the node's namespace (pyroute2 forks a helper for that)

    def no_process(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"started a process: {args[0]!r}")

    monkeypatch.setattr(subprocess, "run", no_process)
    monkeypatch.setattr(subprocess, "Popen", no_process)
    changes, errors = be.reconcile(leases[0], leases)
    assert not errors and changes.count == 3
    assert be.reconcile(leases[0], leases)[0].empty  # the dumps read back what was written
    monkeypatch.undo()
    assert "10.244.2.0/24 via 10.244.2.0 dev flannel.1 proto 78 onlink" in ip_out(nodes[0].ns,
                                                                                   "route")
    monkeypatch.setattr(subprocess, "run", no_process)
    gone = Changes(del_routes=changes.add_routes, del_fdb=changes.add_fdb,
                   del_neighbours=changes.add_neighbours)
    assert be.apply(gone) == []
    assert be.apply(gone) == []  # already gone: not an error
    stray = Changes(add_neighbours=(Neighbour(IPv4Address("10.244.9.0"), "0e:00:00:00:00:09",
                                              "nosuchdev"),))
    assert be.apply(stray) == [
        "ip neigh replace 10.244.9.0 lladdr 0e:00:00:00:00:09 dev nosuchdev permanent: "
        "No such device"]
