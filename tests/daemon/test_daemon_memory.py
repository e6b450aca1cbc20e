"""What the daemon keeps per lease (issue 12: its RSS beside flanneld's, which grew ~0.8 KiB per
lease where netweft grew ~2.5 KiB). Pure: the records and views, not the process's RSS (that is
bench/daemon_scale.py's job). Each test names what it used to keep."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import sys
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from pathlib import Path

import pytest
from netweft.backends.base import (
    Changes,
    DesiredState,
    FdbEntry,
    Neighbour,
    PeerState,
    Route,
)
from netweft.backends.netlink import apply_changes
from netweft.cni.rtnl import WINDOW
from netweft.daemon import netns
from netweft.daemon.etcdsubnets import EtcdSubnetManager
from netweft.daemon.metrics import Metrics
from netweft.daemon.peers import PeerReconciler
from netweft.ipam.config import parse_config
from netweft.ipam.lease import Lease, parse_lease
from netweft.ipam.leasecheck import LeaseFilter, _inside, _nets_overlap, check_leases
from netweft.ipam.leases import LeaseStore
from netweft.kv.memory import MemoryKV
from support.fake_backend import InlineKernel, RecordingHostGw

CFG = parse_config('{"Network": "10.0.0.0/8", "SubnetLen": 24}')


def vxlan_value(i: int) -> bytes:
    return json.dumps({"PublicIP": f"198.18.0.{i + 1}", "BackendType": "vxlan",
                       "BackendData": {"VNI": 1, "VtepMAC": f"0e:00:00:00:00:{i:02x}"}}).encode()


def leases(n: int) -> list[Lease]:
    return [parse_lease(f"10.1.{i}.0-24", vxlan_value(i), etcd_lease_id=100 + i,
                        mod_revision=10 + i, create_revision=10 + i) for i in range(n)]


def test_a_lease_has_no_instance_dict_and_one_key_name_string() -> None:
    """Slots (a frozen dataclass with a __dict__ for its cached key name was ~200 bytes more a
    lease); the key name is computed once and the same string object every time."""
    le = leases(1)[0]
    assert not hasattr(le, "__dict__")
    assert le.key_name == "10.1.0.0-24" and le.key_name is le.key_name
    assert le == Lease(le.subnet, le.public_ip, "vxlan", dict(le.backend_data),
                       etcd_lease_id=100, mod_revision=10)  # the cache is not compared


def test_parsed_leases_share_the_backend_type_and_field_name_strings() -> None:
    """One "vxlan", "VNI" and "VtepMAC" string for all leases, not one each from every JSON
    document (~160 bytes a lease)."""
    a, b = leases(2)
    assert a.backend_type is b.backend_type
    keys_a, keys_b = list(a.backend_data), list(b.backend_data)
    assert keys_a == keys_b == ["VNI", "VtepMAC"]
    assert all(x is y for x, y in zip(keys_a, keys_b, strict=True))


def test_checking_leases_caches_no_addresses_in_their_subnets() -> None:
    """subnet_of()/overlaps() cached broadcast_address and hostmask in every lease's subnet:
    two address objects a lease for the daemon's life. The verdicts are unchanged."""
    items = leases(4)
    outside = parse_lease("11.0.0.0-24", vxlan_value(8))
    wrong_len = parse_lease("10.2.0.0-25", vxlan_value(7))
    own = parse_lease("10.1.9.0-24", vxlan_value(9))
    result = check_leases(CFG, [*items, outside, wrong_len], own)
    assert result.valid == items
    assert {bad.reason for bad in result.invalid} == {
        "SubnetLen: 10.2.0.0/25 is not a /24", "Network: 11.0.0.0/24 is outside 10.0.0.0/8"}
    assert LeaseFilter(CFG).valid(items, own) == items
    for le in [*items, outside, wrong_len, own]:
        assert le.subnet is not None
        assert not {"broadcast_address", "hostmask"} & set(vars(le.subnet))


def test_the_overlap_and_inside_checks_agree_with_ipaddress() -> None:
    nets = [IPv4Network(n) for n in ("10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.3.0/24",
                                     "10.1.2.128/25", "11.0.0.0/8", "0.0.0.0/0")]
    for a in nets:
        for b in nets:
            assert _nets_overlap(a, b) == a.overlaps(b), (a, b)
            assert _inside(a, b) == a.subnet_of(b), (a, b)
    v6 = [IPv6Network(n) for n in ("fd00::/8", "fd00:1::/64", "fd00:2::/64", "fe80::/10")]
    for a in v6:
        for b in v6:
            assert _nets_overlap(a, b) == a.overlaps(b), (a, b)
            assert _inside(a, b) == a.subnet_of(b), (a, b)


def test_the_etcd_manager_keys_the_views_by_each_lease_s_own_key_name() -> None:
    """The daemon's lease view, valid view and the watch's view held three fresh copies of
    every full etcd key (~270 bytes a lease); they use the lease's key name now."""
    manager = EtcdSubnetManager.__new__(EtcdSubnetManager)
    le = leases(1)[0]
    assert manager.lease_key(le) is le.key_name

    async def watched() -> dict[str, Lease]:
        kv = MemoryKV()
        store = LeaseStore(kv, "/n")
        for x in leases(3):
            await kv.put(store.key_for(x), x.value_json())
        current, rev = await store.list()
        seen: dict[str, Lease] = {}
        stream = store.watch(current, rev)
        await kv.put("/n/subnets/10.1.5.0-24", vxlan_value(5))
        await kv.delete("/n/subnets/10.1.1.0-24")
        async for events in stream:
            for ev in events:
                if ev.kind == "added":
                    seen[ev.lease.key_name] = ev.lease
                else:
                    seen.pop(ev.lease.key_name, None)
                    seen["removed " + ev.lease.key_name] = ev.lease
            if "removed 10.1.1.0-24" in seen:
                break
        return seen

    seen = asyncio.run(watched())
    assert set(seen) == {"10.1.5.0-24", "removed 10.1.1.0-24"}
    assert seen["removed 10.1.1.0-24"].public_ip == IPv4Address("198.18.0.2")  # the old lease


def test_a_full_pass_keeps_no_desired_records_in_the_backend() -> None:
    """Backend.reconcile kept the whole desired state (a PeerState with its route, neighbour
    and FDB records per peer, ~400 bytes a lease) for one set of subnets."""
    backend = RecordingHostGw()
    own = Lease(IPv4Network("10.244.0.0/24"), IPv4Address("192.0.2.10"), "host-gw",
                etcd_lease_id=1)
    peers_ = [Lease(IPv4Network(f"10.244.{n}.0/24"), IPv4Address(f"192.0.2.{10 + n}"),
                    "host-gw", etcd_lease_id=1) for n in (1, 2)]
    peers = PeerReconciler(backend, InlineKernel(), Metrics(), lambda: own,
                           lambda le: le.key_name, interval=3600,
                           config=parse_config('{"Network": "10.244.0.0/16", '
                                               '"Backend": {"Type": "host-gw"}}'))
    peers.set_leases([own, *peers_])
    asyncio.run(peers.reconcile_once())
    assert peers.programmed == 2
    assert backend.last_ok == {p.subnet for p in peers_}
    kept = list(vars(backend).values())
    assert not [v for v in kept if isinstance(v, DesiredState | PeerState)]


class _Rtnl:
    """send_all over a fake kernel: records each call's messages; ``fail``: the position of a
    message among all sent (0-based) -> its errno."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[int, bytes]]] = []
        self.fail: dict[int, int] = {}
        self.sent = 0

    def send_all(self, messages: list[tuple[int, bytes]]) -> dict[int, int]:
        self.calls.append(list(messages))
        failed = {}
        for seq, _ in messages:
            if self.sent in self.fail:
                failed[seq] = self.fail[self.sent]
            self.sent += 1
        return failed


class _Nl:
    def __init__(self) -> None:
        self.rtnl = _Rtnl()

    def rtnl_index(self, dev: str) -> int | None:
        return {"flannel.1": 5}.get(dev)


def test_changes_go_to_the_kernel_a_window_at_a_time_described_only_on_failure(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A first pass over 5,000 peers built all 15,000 messages and their descriptions before
    sending any (~4.5 MiB of small objects whose pools stayed resident)."""
    described: list[object] = []
    original = Neighbour.describe
    monkeypatch.setattr(Neighbour, "describe", lambda n: described.append(n) or original(n))
    n = 1000
    neigh = tuple(Neighbour(IPv4Address(f"10.1.{i // 250}.{i % 250}"), "0e:00:00:00:00:01",
                            "flannel.1") for i in range(n))
    fdb = tuple(FdbEntry(f"0e:00:00:00:{i // 256:02x}:{i % 256:02x}",
                         IPv4Address("198.18.0.1"), "flannel.1") for i in range(n))
    routes = tuple(Route(IPv4Network(f"10.2.{i // 256}.{i % 256}/32"), None, "flannel.1")
                   for i in range(n))
    gone = (Route(IPv4Network("10.3.0.0/24"), None, "flannel.9"),)  # its device is gone
    nl = _Nl()
    nl.rtnl.fail = {6: errno.EINVAL}  # the 7th message (a neighbour) fails
    errors = apply_changes(nl, Changes(add_neighbours=neigh, add_fdb=fdb, add_routes=routes,  # type: ignore[arg-type]
                                       del_routes=gone))
    assert max(len(c) for c in nl.rtnl.calls) <= WINDOW
    assert sum(len(c) for c in nl.rtnl.calls) == 3 * n
    assert errors == [f"ip neigh replace {neigh[6].describe()}: {os.strerror(errno.EINVAL)}"]
    assert described == [neigh[6], neigh[6]]  # only the failed entry (and the assert above)


def test_a_dump_is_decoded_as_it_arrives_and_always_read_to_its_end(
        netns_factory: Callable[[str], str]) -> None:
    """Netlink.routes/neighbours/fdb kept every raw reply and then every reply's attribute dict
    of a 15,000-entry dump before making one record (~8 MiB at every full pass). A parse error
    still leaves the socket clean for the next request."""
    ns = netns_factory("dump")
    netns.run(ns, ["ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1"])
    netns.run(ns, ["ip", "link", "set", "d0", "up"])
    netns.run(ns, ["ip", "link", "set", "d1", "up"])
    lines = [f"route add 10.7.{i // 256}.{i % 256}/32 dev d0 proto 78" for i in range(600)]
    netns.run(ns, ["ip", "-batch", "-"], input="\n".join(lines) + "\n")
    code = """
import json
from netweft.backends.netlink import Netlink
from netweft.cni.rtnl import RTM_GETROUTE, RTMSG
nl = Netlink()
seen = []
def parse(body):
    seen.append(len(body))
    if len(seen) == 5:
        raise ValueError("bad reply")
    return None
try:
    nl.rtnl.dump_each(RTM_GETROUTE, RTMSG.pack(2, 0, 0, 0, 0, 0, 0, 0, 0), parse)
    raised = False
except ValueError:
    raised = True
routes = nl.routes(78)
print(json.dumps({"raised": raised, "parsed": len(seen), "routes": len(routes),
                  "dev": sorted({r.dev for r in routes})}))
"""
    got = json.loads(netns.run(ns, [sys.executable, "-c", code]).stdout.strip().splitlines()[-1])
    assert got == {"raised": True, "parsed": 5, "routes": 600, "dev": ["d0"]}


def test_a_full_pass_hands_freed_heap_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a full pass the kernel thread's freed sets and buffers stayed in the arena (RSS
    rose by ~6 MiB after the first periodic pass with 5,000 peers); the pass trims it now."""
    from netweft.daemon import memtrim
    from netweft.daemon import peers as peers_module

    calls: list[int] = []
    monkeypatch.setattr(peers_module, "release_free_memory", lambda: calls.append(1) or True)
    backend = RecordingHostGw()
    own = Lease(IPv4Network("10.244.0.0/24"), IPv4Address("192.0.2.10"), "host-gw",
                etcd_lease_id=1)
    peers = PeerReconciler(backend, InlineKernel(), Metrics(), lambda: own,
                           lambda le: le.key_name, interval=3600,
                           config=parse_config('{"Network": "10.244.0.0/16", '
                                               '"Backend": {"Type": "host-gw"}}'))
    peers.set_leases([own])
    asyncio.run(peers.reconcile_once())
    asyncio.run(peers.reconcile_once())
    assert calls == [1, 1]
    assert memtrim.release_free_memory() in (True, False)  # glibc here: the real call works


def test_a_full_pass_answers_kernel_entries_equal_to_the_desired_with_those_records(
        netns_factory: Callable[[str], str]) -> None:
    """Every full pass made a new record (and address and network objects) for each of the
    kernel's 15,000 entries with 5,000 peers: ~3.4 MiB at each pass, whose peak the RSS kept.
    Equal entries are now the desired records themselves; a different one is still new."""
    ns = netns_factory("known")
    netns.run(ns, ["ip", "link", "add", "flannel.1", "type", "vxlan", "id", "1", "dstport",
                   "8472", "nolearning"])
    netns.run(ns, ["ip", "link", "set", "flannel.1", "up"])
    code = """
import json
from ipaddress import IPv4Address, IPv4Network
from netweft.backends.base import Changes, FdbEntry, Neighbour, Route
from netweft.backends.netlink import Known, Netlink, apply_changes
nl = Netlink()
routes = [Route(IPv4Network(f"10.5.{i}.0/24"), IPv4Address(f"10.5.{i}.0"), "flannel.1", True)
          for i in range(50)]
neigh = [Neighbour(IPv4Address(f"10.5.{i}.0"), f"0e:00:00:00:00:{i:02x}", "flannel.1")
         for i in range(50)]
fdb = [FdbEntry(f"0e:00:00:00:00:{i:02x}", IPv4Address(f"198.18.0.{i + 1}"), "flannel.1")
       for i in range(50)]
assert apply_changes(nl, Changes(tuple(neigh), tuple(fdb), tuple(routes))) == []
other = Route(IPv4Network("10.5.0.0/24"), IPv4Address("10.5.0.9"), "flannel.1", True)
known = Known.of([other, *routes[1:]], neigh, fdb)
got_routes = nl.routes(78, known)
got_neigh = nl.neighbours("flannel.1", known)
got_fdb = nl.fdb("flannel.1", known)
print(json.dumps({
    "routes_same": sum(any(r is g for g in got_routes) for r in routes),
    "routes_equal": sorted(map(str, got_routes)) == sorted(map(str, routes)),
    "neigh_same": sum(any(n is g for g in got_neigh) for n in neigh),
    "fdb_same": sum(any(f is g for g in got_fdb) for f in fdb),
    "plain_equal": set(nl.routes(78)) == set(routes)}))
"""
    got = json.loads(netns.run(ns, [sys.executable, "-c", code]).stdout.strip().splitlines()[-1])
    # routes[0] differs from what `known` holds for its subnet (another gateway): a new record
    assert got == {"routes_same": 49, "routes_equal": True, "neigh_same": 50, "fdb_same": 50,
                   "plain_equal": True}


def test_the_status_file_is_replaced_without_fsyncs(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    """The daemon rewrites status.json after every pass on its event loop; its two fsyncs (file
    and directory: p50 0.8, p90 5, max 7 ms on this machine's disk) held up any lease event that
    arrived meanwhile. Other atomic writes (subnet.env, keys) stay durable."""
    from netweft.common import atomicfile
    from netweft.daemon.statedir import StateDir, read_status

    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(atomicfile.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    state = StateDir(str(tmp_path))
    state.write_status({"peers": 3})
    assert read_status(str(tmp_path)) == {"peers": 3}
    assert synced == []
    atomicfile.write_atomic(str(tmp_path / "subnet.env"), "FLANNEL_MTU=1450\n")
    assert len(synced) == 2  # the file and its directory
