"""Node IPAM: host-local's on-disk layout, round-robin, exclusions, requested IPs, release,
GC, and no collisions under concurrency, also with the reference host-local plugin itself."""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Callable
from ipaddress import ip_address, ip_network

import pytest
from netweft.cni.invoke import PluginCall, PluginReply, invoke
from netweft.ipam.allocator import (
    IPRange,
    NodeAllocator,
    RangeExhausted,
    RequestedIPUnavailable,
)

HOST_LOCAL = "/usr/lib/cni/host-local"


def alloc(tmp_path, subnet: str = "10.244.1.0/24", gw: str = "10.244.1.1") -> NodeAllocator:
    return NodeAllocator(str(tmp_path), "net", [IPRange(ip_network(subnet), ip_address(gw))])


def test_files_are_host_local_format(tmp_path) -> None:
    a = alloc(tmp_path)
    [ip] = a.allocate("ctr1", "eth0")
    assert str(ip) == "10.244.1.2/24"
    with open(tmp_path / "net" / "10.244.1.2", newline="") as f:
        assert f.read() == "ctr1\r\neth0"
    assert (tmp_path / "net" / "last_reserved_ip.0").read_text() == "10.244.1.2"


def test_round_robin_skips_gateway_network_broadcast(tmp_path) -> None:
    a = alloc(tmp_path, "10.244.1.0/29", "10.244.1.1")
    got = [str(a.allocate(f"c{i}", "eth0")[0].ip) for i in range(5)]
    assert got == ["10.244.1.2", "10.244.1.3", "10.244.1.4", "10.244.1.5", "10.244.1.6"]
    with pytest.raises(RangeExhausted, match="10.244.1.0/29"):
        a.allocate("c5", "eth0")
    assert a.release("c1", "eth0") == [ip_address("10.244.1.3")]
    # round-robin continues after the last reserved address, wrapping to the freed one
    assert str(a.allocate("c6", "eth0")[0].ip) == "10.244.1.3"
    assert a.free_count() == 0


def test_round_robin_does_not_reuse_freshly_released(tmp_path) -> None:
    a = alloc(tmp_path)
    first = a.allocate("c1", "eth0")[0]
    a.release("c1", "eth0")
    assert a.allocate("c2", "eth0")[0] != first


def test_same_container_gets_same_ip_and_release_is_idempotent(tmp_path) -> None:
    a = alloc(tmp_path)
    one = a.allocate("c1", "eth0")
    assert a.allocate("c1", "eth0") == one
    other = a.allocate("c1", "net1")
    assert other != one
    assert a.release("c1", "eth0") == [one[0].ip]
    assert a.release("c1", "eth0") == []
    assert a.release("never", "eth0") == []
    assert a.held_by("c1", "net1") == [other[0].ip]


def test_requested_ips(tmp_path) -> None:
    a = alloc(tmp_path)
    assert str(a.allocate("c1", "eth0", [ip_address("10.244.1.50")])[0]) == "10.244.1.50/24"
    with pytest.raises(RequestedIPUnavailable, match="already allocated to container c1"):
        a.allocate("c2", "eth0", [ip_address("10.244.1.50")])
    for bad in ("10.244.1.1", "10.244.1.0", "10.244.1.255", "10.9.0.1"):
        with pytest.raises(RequestedIPUnavailable):
            a.allocate("c3", "eth0", [ip_address(bad)])
    assert [x.ip for x in a.allocations()] == [ip_address("10.244.1.50")]


def test_gc_keeps_only_valid(tmp_path) -> None:
    a = alloc(tmp_path)
    for cid in ("a", "b", "c"):
        a.allocate(cid, "eth0")
    gone = a.gc([("b", "eth0")])
    assert sorted(g.container_id for g in gone) == ["a", "c"]
    assert [x.container_id for x in a.allocations()] == ["b"]


def test_dual_stack_one_address_per_family(tmp_path) -> None:
    a = NodeAllocator(str(tmp_path), "net", [
        IPRange(ip_network("10.244.1.0/24"), ip_address("10.244.1.1")),
        IPRange(ip_network("fd00:10:244:1::/64"), ip_address("fd00:10:244:1::1"))])
    v4, v6 = a.allocate("c1", "eth0")
    assert str(v4) == "10.244.1.2/24" and str(v6) == "fd00:10:244:1::2/64"
    assert os.path.exists(tmp_path / "net" / "last_reserved_ip.1")


def _worker(args: tuple[str, int]) -> str:
    path, i = args
    a = alloc(path)
    return str(a.allocate(f"proc-{i}", "eth0")[0].ip)


def test_concurrent_processes_never_collide(tmp_path) -> None:
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(8) as pool:
        got = pool.map(_worker, [(str(tmp_path), i) for i in range(80)])
    assert len(set(got)) == 80
    assert len(alloc(tmp_path).allocations()) == 80


def _host_local(node: str, command: str, cid: str, data_dir: str) -> PluginReply:
    conf = {"cniVersion": "1.0.0", "name": "net",
            "ipam": {"type": "host-local", "subnet": "10.244.1.0/24", "gateway": "10.244.1.1",
                     "dataDir": data_dir}}
    return invoke(PluginCall(HOST_LOCAL, command, conf, cid, "/proc/self/ns/net", "eth0",
                             cni_path="/usr/lib/cni", node_netns=node))


def test_interoperates_with_reference_host_local(tmp_path,
                                                 netns_factory: Callable[[str], str]) -> None:
    if not os.path.exists(HOST_LOCAL):
        pytest.skip("containernetworking-plugins not installed")
    node = netns_factory("cnode")
    data = str(tmp_path)
    ours = alloc(tmp_path)
    mine = {str(ours.allocate(f"ours-{i}", "eth0")[0].ip) for i in range(3)}
    theirs = set()
    for i in range(3):
        r = _host_local(node, "ADD", f"ref-{i}", data)
        assert r.exit_code == 0, r.stdout + r.stderr
        theirs.add(json.loads(r.stdout)["ips"][0]["address"].split("/")[0])
    assert not mine & theirs
    assert len(ours.allocations()) == 6
    more = {str(ours.allocate(f"ours-{i}", "eth0")[0].ip) for i in range(3, 6)}
    assert not more & theirs
    # host-local releases what it made, we release ours: same files, same directory
    assert _host_local(node, "DEL", "ref-0", data).exit_code == 0
    assert ours.release("ref-1", "eth0") != []  # we read host-local's files too
    assert len(ours.allocations()) == 6 + 3 - 2
