"""``netweft daemon`` with the wireguard backend: real etcd, real daemons in node namespaces,
``wg`` and ``wireguard-go`` (this kernel has no WireGuard). The vxlan repair tests, for this
backend: a deleted peer, route or device (wireguard-go killed) comes back; a restart keeps the key
so peers need no change; a new key (key file deleted) converges on the peers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from netweft.backends.wireguard_wg import Wg
from support import underlay
from support.kernel import ip
from support.nodelab import NodeLab
from support.polling import wait_for

BACKEND = {"Type": "wireguard", "PersistentKeepaliveInterval": 25}


def wg(lab: NodeLab, ns: str) -> Wg:
    return Wg(ns, os.path.join(lab.paths(ns)["state_dir"], "wireguard"))


def peer_keys(lab: NodeLab, ns: str) -> set[str]:
    try:
        return {p.public_key for p in wg(lab, ns).dump("flannel-wg").peers}
    except Exception:  # noqa: BLE001 - the device may be between two lives
        return set()


def running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def lease_key(lab: NodeLab, subnet: object) -> str:
    return str(lab.leases()[str(subnet)]["BackendData"]["PublicKey"])  # type: ignore[index]


def start(lab: NodeLab) -> list:  # type: ignore[type-arg]
    for ns in lab.node_nss:
        lab.start_daemon(ns, "--reconcile-interval", "1")
    subnets = []
    for ns in lab.node_nss:
        try:
            wait_for(lambda ns=ns: lab.http(ns, "/readyz")[0] == 200, what=f"{ns} ready")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; /readyz: {lab.http(ns, '/readyz')}; daemon log: "
                                 f"{lab.log(ns)[-1500:]}") from None
        subnets.append(lab.subnet(ns))
    for ns in lab.node_nss:
        wait_for(lambda ns=ns: (lab.status(ns) or {}).get("peers") == len(lab.node_nss) - 1,
                 what=f"{ns} programs its peers")
    return subnets


def pods_talk(a: str, b: str, subnets: list) -> bool:  # type: ignore[type-arg]
    """Both ways; any of 3 echoes answered counts (the userspace path drops under load)."""
    return underlay.ping(a, subnets[1].network_address + 1, src=subnets[0].network_address + 1,
                         count=3, timeout=2) and \
        underlay.ping(b, subnets[0].network_address + 1, src=subnets[1].network_address + 1,
                      count=3, timeout=2)


def test_wireguard_daemons_restore_deleted_peer_route_and_wireguard_go(make_lab) -> None:
    lab = make_lab(2, BACKEND)
    subnets = start(lab)
    a, b = lab.node_nss
    for ns, subnet in zip(lab.node_nss, subnets, strict=True):
        lab.add_pod_stand_in(ns, subnet)
    assert pods_talk(a, b, subnets)
    status = lab.status(a) or {}
    dp = status["dataplane"]
    assert dp["implementation"] == "userspace" and dp["program"] == "wireguard-go"  # type: ignore[index]
    assert dp["socket"].startswith(lab.paths(a)["state_dir"])  # type: ignore[index]
    assert status["mtu"] == 1440
    # One log line says which WireGuard runs; the key is never logged.
    log = lab.log(a)
    assert log.count("userspace wireguard-go runs flannel-wg") == 1
    with open(os.path.join(lab.paths(a)["state_dir"], "wgkey")) as f:
        assert f.read() not in log
    with open(lab.paths(a)["subnet_file"]) as f:
        assert "FLANNEL_MTU=1440" in f.read()
    key_b = lease_key(lab, subnets[1])
    assert peer_keys(lab, a) == {key_b}

    # A peer removed by hand is restored.
    wg(lab, a).run(["set", "flannel-wg", "peer", key_b, "remove"])
    wait_for(lambda: peer_keys(lab, a) == {key_b}, timeout=10, what="peer restored")
    # A route removed by hand is restored (netlink event: at once).
    subprocess.run(["ip", "-n", a, "route", "del", str(subnets[1])], check=True)
    wait_for(lambda: f"{subnets[1]} dev flannel-wg" in ip(a, "route"), timeout=10,
             what="route restored")
    # wireguard-go killed: the device goes; the daemon starts a new one with the same key.
    pid = int(dp["pid"])  # type: ignore[index]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: ((lab.status(a) or {}).get("dataplane") or {}).get("restarts") == 1,
             timeout=15, what="wireguard-go restarted: " + lab.log(a)[-400:])
    wait_for(lambda: peer_keys(lab, a) == {key_b}, timeout=10, what="peer back on new device")
    wait_for(lambda: f"{subnets[1]} dev flannel-wg" in ip(a, "route"), timeout=10)
    assert lease_key(lab, subnets[0]) == (lab.status(a) or {})["dataplane"]["publicKey"]  # type: ignore[index]
    assert pods_talk(a, b, subnets)
    # The CLI shows which WireGuard runs.
    out = lab.netweft(a, "status", "--subnet-file", lab.paths(a)["subnet_file"],
                      "--state-dir", lab.paths(a)["state_dir"]).stdout
    row = next(line for line in out.splitlines() if line.startswith("wireguard"))
    assert f"userspace wireguard-go pid {pid}" not in row and "1 restarts" in row, out
    assert "userspace wireguard-go pid" in row and "port 51820" in row, out
    # `netweft routes` compares each desired peer and route with what wg and the kernel hold.
    routes = lab.netweft(a, "routes", "--subnet-file", lab.paths(a)["subnet_file"],
                         "--state-dir", lab.paths(a)["state_dir"]).stdout
    assert f"ok      wg-peer   peer {key_b} endpoint 192.0.2.11:51820" in routes, routes
    assert f"ok      route     {subnets[1]} dev flannel-wg" in routes, routes


def test_wireguard_restart_keeps_key_and_a_new_key_converges_on_peers(make_lab) -> None:
    lab = make_lab(3, BACKEND)
    subnets = start(lab)
    a, b, c = lab.node_nss
    for ns, subnet in zip(lab.node_nss, subnets, strict=True):
        lab.add_pod_stand_in(ns, subnet)
    key_a = lease_key(lab, subnets[0])
    before_b = wg(lab, b).dump("flannel-wg").peers
    # Restart: wireguard-go goes with the daemon, even one killed with -9 (parent-death
    # signal), and comes back with the same key.
    go_pid = int((lab.status(a) or {})["dataplane"]["pid"])  # type: ignore[index]
    lab.stop_daemon(a, sig=signal.SIGKILL)
    wait_for(lambda: not running(go_pid), timeout=10,
             what="wireguard-go ends with its killed daemon")
    lab.start_daemon(a, "--reconcile-interval", "1")
    wait_for(lambda: lab.http(a, "/readyz")[0] == 200, what="restarted daemon ready")
    assert lease_key(lab, subnets[0]) == key_a
    assert wg(lab, b).dump("flannel-wg").peers == before_b  # peers need no change
    wait_for(lambda: pods_talk(a, b, subnets), timeout=15, what="traffic after restart")

    # Rotation: delete the key file and restart; every peer swaps to the new key.
    assert lab.stop_daemon(a) == 0
    os.unlink(os.path.join(lab.paths(a)["state_dir"], "wgkey"))
    started = time.monotonic()
    lab.start_daemon(a, "--reconcile-interval", "1")
    wait_for(lambda: lab.http(a, "/readyz")[0] == 200, what="daemon ready with a new key")
    new_key = lease_key(lab, subnets[0])
    assert new_key != key_a
    for ns in (b, c):
        wait_for(lambda ns=ns: new_key in peer_keys(lab, ns) and key_a not in peer_keys(lab, ns),
                 timeout=15, what=f"{ns} swaps to the new key")
    converged = time.monotonic() - started
    assert len(peer_keys(lab, b)) == 2 and len(peer_keys(lab, c)) == 2
    wait_for(lambda: pods_talk(a, b, subnets), timeout=15, what="traffic after rotation")
    assert underlay.ping(c, subnets[0].network_address + 1, src=subnets[2].network_address + 1,
                         count=1, timeout=3)
    print(f"key rotation converged on both peers {converged:.2f}s after the restart began")
    # The other peers were not touched: b still has c's key as before.
    assert lease_key(lab, subnets[2]) in peer_keys(lab, b)
    assert json.loads(json.dumps(lab.status(b)))["errors"] == []


def test_wireguard_etcd_outage_keeps_dataplane_and_resyncs(make_lab) -> None:
    lab = make_lab(2, BACKEND)
    subnets = start(lab)
    a, b = lab.node_nss
    for ns, subnet in zip(lab.node_nss, subnets, strict=True):
        lab.add_pod_stand_in(ns, subnet)
    before = wg(lab, a).dump("flannel-wg").peers
    assert lab.etcd is not None
    lab.etcd.stop()
    wait_for(lambda: "etcd is unreachable" in lab.log(a), timeout=30, what="outage noticed")
    assert lab.procs[a].poll() is None
    assert wg(lab, a).dump("flannel-wg").peers == before
    assert pods_talk(a, b, subnets)
    lab.etcd.start()
    new_key = "gDUvotCWSbbyExWRhpnY8jOzgnGpiw7Sr7fFyTHTP3s="
    lab.put_lease("10.244.251.0/24", {"PublicIP": "192.0.2.98", "BackendType": "wireguard",
                                      "BackendData": {"PublicKey": new_key, "Port": 51820}})
    wait_for(lambda: new_key in peer_keys(lab, a), timeout=30, what="resync after etcd")
    wait_for(lambda: "10.244.251.0/24 dev flannel-wg" in ip(a, "route"), timeout=30)
    assert lab.procs[a].poll() is None
