"""Pure desired-state and diff logic of the backends (no kernel)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from netweft.backends.base import ActualState, FdbEntry, Neighbour, Route, Underlay, diff
from netweft.backends.hostgw import desired_hostgw
from netweft.backends.vxlan import desired_vxlan
from netweft.ipam.lease import Lease

UNDERLAY = Underlay("eth0", 2, IPv4Address("192.0.2.10"), 1500, (IPv4Network("192.0.2.0/24"),))


def lease(subnet: str, ip: str, mac: str | None = "0e:00:00:00:00:01",
          backend: str = "vxlan") -> Lease:
    data = {"VNI": 1, "VtepMAC": mac} if mac else {}
    return Lease(IPv4Network(subnet), IPv4Address(ip), backend, data, etcd_lease_id=5)


OWN = lease("10.244.1.0/24", "192.0.2.10")


def test_vxlan_peer_gets_neighbour_fdb_and_onlink_route() -> None:
    peer = lease("10.244.2.0/24", "192.0.2.11", "0E:AA:BB:CC:DD:EE")
    state = desired_vxlan(OWN, [OWN, peer], "flannel.1", UNDERLAY, direct_routing=False)
    assert state.neighbours == {Neighbour(IPv4Address("10.244.2.0"), "0e:aa:bb:cc:dd:ee",
                                          "flannel.1")}
    assert state.fdb == {FdbEntry("0e:aa:bb:cc:dd:ee", IPv4Address("192.0.2.11"), "flannel.1")}
    assert state.routes == {Route(IPv4Network("10.244.2.0/24"), IPv4Address("10.244.2.0"),
                                  "flannel.1", onlink=True)}
    assert not state.errors


def test_vxlan_direct_routing_uses_plain_route_for_on_link_peers_only() -> None:
    near = lease("10.244.2.0/24", "192.0.2.11")
    far = lease("10.244.3.0/24", "198.51.100.7", "0e:00:00:00:00:03")
    state = desired_vxlan(OWN, [near, far], "flannel.1", UNDERLAY, direct_routing=True)
    assert Route(IPv4Network("10.244.2.0/24"), IPv4Address("192.0.2.11"), "eth0") in state.routes
    assert Route(IPv4Network("10.244.3.0/24"), IPv4Address("10.244.3.0"), "flannel.1",
                 True) in state.routes
    assert len(state.neighbours) == 1 and len(state.fdb) == 1


def test_vxlan_skips_peers_without_mac_or_with_other_backend() -> None:
    state = desired_vxlan(OWN, [lease("10.244.2.0/24", "192.0.2.11", None),
                                lease("10.244.3.0/24", "192.0.2.12", backend="host-gw")],
                          "flannel.1", UNDERLAY, direct_routing=False)
    assert not state.routes
    assert len(state.errors) == 2 and "VtepMAC" in state.errors[0]


def test_reservations_and_own_lease_are_not_peers() -> None:
    reservation = Lease(IPv4Network("10.244.9.0/24"), None, "vxlan")
    state = desired_vxlan(OWN, [OWN, reservation], "flannel.1", UNDERLAY, False)
    assert state.peers == ()


def test_hostgw_route_via_public_ip_and_error_for_off_link_peer() -> None:
    near = lease("10.244.2.0/24", "192.0.2.11", None, "host-gw")
    far = lease("10.244.3.0/24", "198.51.100.7", None, "host-gw")
    state = desired_hostgw(OWN, [near, far], UNDERLAY)
    assert state.routes == {Route(IPv4Network("10.244.2.0/24"), IPv4Address("192.0.2.11"),
                                  "eth0")}
    assert len(state.errors) == 1
    assert "198.51.100.7 is not directly reachable from eth0" in state.errors[0]


def test_diff_adds_missing_replaces_changed_and_removes_strays() -> None:
    peer = lease("10.244.2.0/24", "192.0.2.11", "0e:00:00:00:00:02")
    state = desired_vxlan(OWN, [peer], "flannel.1", UNDERLAY, False)
    stale_neigh = Neighbour(IPv4Address("10.244.2.0"), "0e:00:00:00:00:99", "flannel.1")
    stray_route = Route(IPv4Network("10.244.7.0/24"), IPv4Address("10.244.7.0"), "flannel.1",
                        True)
    actual = ActualState(routes=frozenset(state.routes | {stray_route}),
                         neighbours=frozenset({stale_neigh}), fdb=frozenset())
    changes = diff(state, actual)
    assert changes.add_neighbours == tuple(state.neighbours)  # replaced, not deleted
    assert changes.del_neighbours == ()
    assert changes.add_fdb == tuple(state.fdb)
    assert changes.add_routes == ()
    assert changes.del_routes == (stray_route,)


def test_diff_of_equal_states_is_empty() -> None:
    peers = [lease(f"10.244.{i}.0/24", f"192.0.2.{i + 10}", f"0e:00:00:00:00:{i:02x}")
             for i in range(2, 50)]
    state = desired_vxlan(OWN, peers, "flannel.1", UNDERLAY, False)
    actual = ActualState(state.routes, state.neighbours, state.fdb)
    assert diff(state, actual).empty
