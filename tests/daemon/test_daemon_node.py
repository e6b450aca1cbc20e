"""``netweft daemon`` at node level: real etcd on an underlay bridge, real kernel, daemons run
with ``ip netns exec`` inside node namespaces (as in production), an "outside" gateway host."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from ipaddress import IPv4Network

from support import underlay
from support.kernel import fdb, ip
from support.nodelab import NodeLab
from support.polling import poll_until, wait_for


def kernel_dump(ns: str, dev: str = "flannel.1") -> str:
    """What a restart must not change: device, addresses, routes, neighbours, FDB, nft table."""
    parts = [ip(ns, "-d", "link", "show", dev), ip(ns, "-4", "addr", "show", dev),
             ip(ns, "-4", "route", "show", "table", "all"),
             ip(ns, "neigh", "show", "nud", "permanent"),
             fdb(ns, dev),
             subprocess.run(["ip", "netns", "exec", ns, "nft", "-a", "list", "ruleset"],
                            capture_output=True, text=True).stdout]
    # The link line carries live counters/flags that are not configuration.
    return "\n".join(parts).replace("state UNKNOWN", "")


def metric(lab: NodeLab, ns: str, name: str) -> float:
    for line in lab.http(ns, "/metrics")[1].splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return -1.0


def start_all(lab: NodeLab, *extra: str) -> list[IPv4Network]:
    for ns in lab.node_nss:
        lab.start_daemon(ns, "--reconcile-interval", "1", *extra)
    subnets = []
    for ns in lab.node_nss:
        wait_for(lambda ns=ns: lab.http(ns, "/readyz")[0] == 200, what=f"{ns} ready: "
                 + lab.log(ns)[-500:])
        subnets.append(lab.subnet(ns))
    # Every node has programmed every peer.
    for ns in lab.node_nss:
        wait_for(lambda ns=ns: (lab.status(ns) or {}).get("peers") == len(lab.node_nss) - 1,
                 what=f"{ns} programs its peers")
    return subnets  # type: ignore[return-value]


def test_vxlan_daemons_program_peers_and_pods_talk(make_lab) -> None:
    lab = make_lab(3)
    subnets = start_all(lab)
    a, b, c = lab.node_nss
    assert len(set(subnets)) == 3
    leases = lab.leases()
    mac_b = leases[str(subnets[1])]["BackendData"]["VtepMAC"]  # type: ignore[index]
    # Device: VNI name, learning off, local = public IP, port 8472, MTU underlay - 50, /32.
    link = ip(a, "-d", "link", "show", "flannel.1")
    assert "vxlan id 1 local 192.0.2.10" in link and "dstport 8472" in link
    assert "nolearning" in link and "mtu 1450" in link
    assert f"inet {subnets[0].network_address}/32" in ip(a, "addr", "show", "flannel.1")
    assert leases[str(subnets[0])]["BackendData"]["VtepMAC"] in link  # type: ignore[index]
    # Per peer: permanent neighbour, FDB entry, onlink route.
    gw_b = subnets[1].network_address
    assert f"{gw_b} lladdr {mac_b} PERMANENT" in ip(a, "neigh", "show", "dev", "flannel.1")
    assert f"{mac_b} dst 192.0.2.11 self permanent" in fdb(a)
    assert f"{subnets[1]} via {gw_b} dev flannel.1 proto 78 onlink" in ip(a, "route")
    # subnet.env
    with open(lab.paths(a)["subnet_file"]) as f:
        assert f.read() == (f"FLANNEL_NETWORK=10.244.0.0/16\n"
                            f"FLANNEL_SUBNET={subnets[0].network_address + 1}/24\n"
                            "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    # Pod stand-ins on each node's subnet reach each other across nodes.
    addrs = [lab.add_pod_stand_in(ns, s) for ns, s in zip(lab.node_nss, subnets, strict=True)]
    assert underlay.ping(a, addrs[1].ip, src=addrs[0].ip)
    assert underlay.ping(c, addrs[0].ip, src=addrs[2].ip)
    assert underlay.ping(b, subnets[2].network_address, src=subnets[1].network_address)
    # Metrics.
    code, body = lab.http(a, "/metrics")
    assert code == 200 and "netweft_peers_programmed 2" in body and "netweft_leases 3" in body
    assert "netweft_reconcile_runs_total" in body and "netweft_etcd_errors_total" in body \
        or "netweft_reconcile_runs_total" in body
    assert lab.http(a, "/healthz")[0] == 200


def test_lease_added_and_removed_by_hand(make_lab) -> None:
    lab = make_lab(2)
    start_all(lab)
    a = lab.node_nss[0]
    mac = "0e:aa:bb:cc:dd:01"
    lab.put_lease("10.244.250.0/24", {"PublicIP": "192.0.2.99", "BackendType": "vxlan",
                                      "BackendData": {"VNI": 1, "VtepMAC": mac}})
    wait_for(lambda: "10.244.250.0/24 via 10.244.250.0 dev flannel.1" in ip(a, "route"),
             what="the new lease's route")
    assert f"10.244.250.0 lladdr {mac} PERMANENT" in ip(a, "neigh", "show", "dev", "flannel.1")
    assert f"{mac} dst 192.0.2.99" in fdb(a)
    lab.delete_lease("10.244.250.0/24")
    wait_for(lambda: "10.244.250.0" not in ip(a, "route"), what="route removal")
    wait_for(lambda: "10.244.250.0" not in ip(a, "neigh", "show", "dev", "flannel.1"),
             what="neighbour removal")
    assert mac not in fdb(a)


def test_hand_deleted_device_route_fdb_are_restored(make_lab) -> None:
    lab = make_lab(2)
    subnets = start_all(lab)
    a = lab.node_nss[0]
    before = kernel_dump(a)
    mac_b = lab.leases()[str(subnets[1])]["BackendData"]["VtepMAC"]  # type: ignore[index]
    subprocess.run(["ip", "-n", a, "route", "del", str(subnets[1])], check=True)
    wait_for(lambda: str(subnets[1]) in ip(a, "route"), timeout=10, what="route restored")
    subprocess.run(["bridge", "-n", a, "fdb", "del", str(mac_b), "dev", "flannel.1", "dst",
                    "192.0.2.11"], check=True)
    wait_for(lambda: str(mac_b) in fdb(a), timeout=10, what="fdb entry restored")
    subprocess.run(["ip", "-n", a, "neigh", "del", str(subnets[1].network_address), "dev",
                    "flannel.1"], check=True)
    wait_for(lambda: "PERMANENT" in ip(a, "neigh", "show", "dev", "flannel.1"), timeout=10,
             what="neighbour restored")
    subprocess.run(["ip", "-n", a, "link", "del", "flannel.1"], check=True)
    wait_for(lambda: str(subnets[1]) in ip(a, "route"), timeout=10, what="device restored")
    wait_for(lambda: kernel_dump(a).count("PERMANENT") == before.count("PERMANENT"), timeout=10)
    after = kernel_dump(a)
    # Same MAC, addresses and entries (interface index changes, nothing else).
    strip = [line for line in before.splitlines() if "flannel.1:" not in line]
    strip_after = [line for line in after.splitlines() if "flannel.1:" not in line]
    assert strip == strip_after
    assert underlay.ping(a, subnets[1].network_address, src=subnets[0].network_address)


def test_restart_keeps_subnet_mac_and_changes_nothing(make_lab) -> None:
    lab = make_lab(2)
    subnets = start_all(lab)
    a, b = lab.node_nss
    before = {ns: kernel_dump(ns) for ns in (a, b)}
    mac = lab.leases()[str(subnets[0])]["BackendData"]["VtepMAC"]  # type: ignore[index]
    assert lab.stop_daemon(a) == 0
    assert "the dataplane stays in place" in lab.log(a)
    assert kernel_dump(a) == before[a]  # SIGTERM leaves everything in place
    # A steady ping across the restart must not lose a packet.
    pinger = subprocess.Popen(["ip", "netns", "exec", b, "ping", "-i", "0.05", "-c", "80",
                               "-I", str(subnets[1].network_address),
                               str(subnets[0].network_address)],
                              stdout=subprocess.PIPE, text=True)
    lab.start_daemon(a, "--reconcile-interval", "1")
    wait_for(lambda: lab.http(a, "/readyz")[0] == 200, what="restarted daemon ready")
    wait_for(lambda: (lab.status(a) or {}).get("reconciles", 0) >= 2, what="two passes")
    out, _ = pinger.communicate(timeout=30)
    assert " 0% packet loss" in out, out
    assert lab.subnet(a) == subnets[0]
    assert lab.leases()[str(subnets[0])]["BackendData"]["VtepMAC"] == mac  # type: ignore[index]
    assert kernel_dump(a) == before[a]
    assert kernel_dump(b) == before[b]
    assert "kernel change" not in lab.log(a).split("public interface")[-1]
    # A "reboot": the device is gone, the state directory stays: the same MAC comes back.
    lab.stop_daemon(a)
    subprocess.run(["ip", "-n", a, "link", "del", "flannel.1"], check=True)
    lab.start_daemon(a, "--reconcile-interval", "1")
    wait_for(lambda: lab.http(a, "/readyz")[0] == 200, what="daemon ready after reboot")
    assert f"link/ether {mac} " in ip(a, "link", "show", "flannel.1")
    assert lab.leases()[str(subnets[0])]["BackendData"]["VtepMAC"] == mac  # type: ignore[index]


def test_etcd_outage_keeps_dataplane_and_resyncs(make_lab) -> None:
    lab = make_lab(2)
    subnets = start_all(lab)
    a = lab.node_nss[0]
    proc = lab.procs[a]
    before = kernel_dump(a)
    assert lab.etcd is not None
    lab.etcd.stop()
    wait_for(lambda: metric(lab, a, "netweft_etcd_errors_total") >= 1
             and metric(lab, a, "netweft_etcd_up") == 0, timeout=30, what="etcd errors counted")
    assert proc.poll() is None
    assert kernel_dump(a) == before
    assert underlay.ping(a, subnets[1].network_address, src=subnets[0].network_address)
    lab.etcd.start()
    lab.put_lease("10.244.251.0/24", {"PublicIP": "192.0.2.98", "BackendType": "vxlan",
                                      "BackendData": {"VNI": 1, "VtepMAC": "0e:aa:bb:cc:dd:02"}})
    wait_for(lambda: "10.244.251.0/24" in ip(a, "route"), timeout=30, what="resync after etcd")
    wait_for(lambda: metric(lab, a, "netweft_etcd_up") == 1, timeout=30, what="etcd up again")
    assert proc.poll() is None


def test_short_lease_is_renewed_and_a_revoked_one_reacquired(make_lab) -> None:
    lab = make_lab(2)
    subnets = start_all(lab, "--lease-ttl", "10", "--renew-margin", "8")
    a = lab.node_nss[0]
    lease_id = lab.leases()[str(subnets[0])]["_lease"]
    # Renewed every ~2 s: after more than one TTL it is still the same etcd lease.
    time.sleep(12)
    assert lab.leases()[str(subnets[0])]["_lease"] == lease_id
    ttl = lab.etcdctl("lease", "timetolive", format(int(lease_id), "x"))  # type: ignore[arg-type]
    assert "granted with TTL(10s)" in ttl
    lab.etcdctl("lease", "revoke", format(int(lease_id), "x"))  # type: ignore[arg-type]
    wait_for(lambda: str(subnets[0]) in lab.leases()
             and lab.leases()[str(subnets[0])]["_lease"] != lease_id, timeout=20,
             what="lease re-acquired")
    assert lab.procs[a].poll() is None
    assert lab.subnet(a) == subnets[0]


def test_masquerade_for_pod_to_outside_not_pod_to_pod(make_lab) -> None:
    lab = make_lab(2)
    subnets = start_all(lab)
    a, b = lab.node_nss
    pod_a = lab.add_pod_stand_in(a, subnets[0])
    pod_b = lab.add_pod_stand_in(b, subnets[1])
    table = subprocess.run(["ip", "netns", "exec", a, "nft", "list", "table", "ip", "netweft"],
                           capture_output=True, text=True, check=True).stdout
    assert "meta mark & 0x00004000 == 0x00004000 return" in table
    # The outside host has no route to the pod network: a reply only comes back when the
    # source was rewritten to the node's address.
    assert underlay.ping(a, "192.0.2.1", src=pod_a.ip)
    assert underlay.ping(b, pod_a.ip, src=pod_b.ip)
    conntrack = subprocess.run(["ip", "netns", "exec", a, "conntrack", "-L", "-p", "icmp"],
                               capture_output=True, text=True).stdout
    to_outside = [line for line in conntrack.splitlines() if "dst=192.0.2.1 " in line]
    assert to_outside and f"src={pod_a.ip} " in to_outside[0]
    assert "dst=192.0.2.10 " in to_outside[0]  # reply goes to the node: masqueraded
    pod_to_pod = [line for line in conntrack.splitlines() if f"src={pod_b.ip} " in line]
    assert pod_to_pod and f"dst={pod_b.ip} " in pod_to_pod[0].split("src=", 2)[2]


def test_hostgw_daemons_and_iptables_firewall(make_lab) -> None:
    lab = make_lab(2, {"Type": "host-gw"})
    subnets = start_all(lab, "--firewall", "iptables")
    a, b = lab.node_nss
    assert f"{subnets[1]} via 192.0.2.11 dev eth0 proto 78" in ip(a, "route")
    with open(lab.paths(a)["subnet_file"]) as f:
        assert "FLANNEL_MTU=1500" in f.read()
    pod_a = lab.add_pod_stand_in(a, subnets[0])
    pod_b = lab.add_pod_stand_in(b, subnets[1])
    assert underlay.ping(a, pod_b.ip, src=pod_a.ip)
    assert underlay.ping(a, "192.0.2.1", src=pod_a.ip)  # masqueraded by iptables
    saved = subprocess.run(["ip", "netns", "exec", a, "iptables-save", "-t", "nat"],
                           capture_output=True, text=True).stdout
    assert "-A POSTROUTING -m comment --comment \"netweft masq\" -j NETWEFT-POSTRTG" in saved
    # A route deleted by hand comes back.
    subprocess.run(["ip", "-n", a, "route", "del", str(subnets[1])], check=True)
    wait_for(lambda: str(subnets[1]) in ip(a, "route"), timeout=10, what="host-gw route back")
    p = lab.paths(a)
    out = lab.netweft(a, "routes", "--subnet-file", p["subnet_file"], "--state-dir",
                      p["state_dir"]).stdout
    assert f"ok      route     {subnets[1]} via 192.0.2.11 dev eth0" in out


def test_daemon_waits_for_the_network_config(make_lab) -> None:
    lab = make_lab(1, config=False)
    ns = lab.node_nss[0]
    lab.start_daemon(ns, "--reconcile-interval", "1")
    wait_for(lambda: lab.http(ns, "/healthz")[0] == 200, what="health endpoint")
    wait_for(lambda: "waiting for the network config" in lab.http(ns, "/readyz")[1],
             what="readyz names the missing config")
    assert lab.http(ns, "/readyz")[0] == 503
    # SIGTERM while still waiting: a prompt, clean exit.
    assert lab.stop_daemon(ns) == 0
    assert "Traceback" not in lab.log(ns)
    lab.start_daemon(ns, "--reconcile-interval", "1")
    lab.set_config({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}})
    wait_for(lambda: lab.http(ns, "/readyz")[0] == 200, timeout=30, what="ready after config")
    assert lab.subnet(ns) is not None
    # A second daemon on the same state directory, or the same metrics port: one line, exit 1.
    p = lab.paths(ns)
    second = lab.netweft(ns, "daemon", "--subnet-file", p["subnet_file"] + ".2", "--state-dir",
                         p["state_dir"], "--cni-socket", "", check=False)
    assert second.returncode == 1
    assert second.stderr.strip().splitlines()[-1] == (
        f"netweft: another netweft daemon (pid {lab.procs[ns].pid}) uses --state-dir "
        f"{p['state_dir']}")
    second = lab.netweft(ns, "daemon", "--subnet-file", p["subnet_file"] + ".2", "--state-dir",
                         p["state_dir"] + ".2", "--cni-socket", "", check=False)
    assert second.returncode == 1
    assert second.stderr.strip().splitlines()[-1].startswith(
        "netweft: --metrics-addr 127.0.0.1:9464: ")


def test_hostgw_refuses_peer_not_on_link(make_lab) -> None:
    lab = make_lab(1, {"Type": "host-gw"})
    lab.put_lease("10.244.99.0/24", {"PublicIP": "198.51.100.7", "BackendType": "host-gw"})
    ns = lab.node_nss[0]
    proc = lab.start_daemon(ns)
    assert proc.wait(timeout=30) == 1
    log = lab.log(ns)
    assert ("netweft: host-gw: peer 10.244.99.0/24 at 198.51.100.7 is not directly reachable "
            "from eth0") in log
    assert "Traceback" not in log


def test_cleanup_on_exit_and_inspection_cli(make_lab) -> None:
    lab = make_lab(2)
    subnets = start_all(lab, "--cleanup-on-exit")
    a, _b = lab.node_nss
    p = lab.paths(a)
    paths = ["--subnet-file", p["subnet_file"], "--state-dir", p["state_dir"]]
    out = lab.netweft(a, "routes", *paths).stdout
    assert f"peer {subnets[1]} at 192.0.2.11" in out and "MISSING" not in out
    subprocess.run(["ip", "-n", a, "route", "add", "10.244.252.0/24", "via", "10.244.252.0",
                    "dev", "flannel.1", "onlink", "proto", "78"], check=True)
    # cleanup-on-exit: the device and our routes and rules go (a clean exit, not a SIGKILL)
    code = lab.stop_daemon(a, timeout=60)
    assert code == 0, "\n".join(line[:200] for line in lab.log(a).splitlines()
                                 if "DEBUG pyroute2" not in line)[-6000:]
    assert "flannel.1" not in ip(a, "link"), lab.log(a)[-3000:]
    assert "proto 78" not in ip(a, "route")
    assert "netweft" not in subprocess.run(["ip", "netns", "exec", a, "nft", "list", "tables"],
                                           capture_output=True, text=True).stdout
    # The daemon is down: the CLI still reads etcd and the kernel.
    res = lab.netweft(a, "routes", "--json", *paths, check=False)
    assert res.returncode == 3
    import json
    report = json.loads(res.stdout)
    states = {e["kind"]: e["state"] for e in report["peers"][0]["entries"]}
    assert states == {"neighbour": "missing", "fdb": "missing", "route": "missing"}
    status = lab.netweft(a, "status", *paths).stdout
    assert "daemon          not running" in status and str(subnets[0]) in status
    assert f"store           etcd ({lab.endpoint}) ok" in status, status
    assert "flannel.1 (missing)" in status


# --- healing speed (issue 9 item 8) ------------------------------------------------------------

# Seconds. Quiet machine: 0.07-0.35 s per repair. The median of three must stay within a few
# hundred ms; single repairs may take longer when the machine runs at load 20-40 on 2 cores
# (seen here: 1.2 s once), hence the looser bound on the slowest. Before the fix a deletion
# queued behind other notices was not repaired within 10 s; the periodic pass is 60 s here.
REPAIR_MEDIAN_BOUND = 0.5
REPAIR_MAX_BOUND = 2.0


def unrelated_churn(ns: str, count: int = 8) -> None:
    """Kernel notices that are none of the daemon's business (routes of another protocol),
    queued ahead of the deletion that follows: each must not delay the one that matters."""
    batch = "".join(f"route add 198.18.{i}.0/24 dev eth0\n" for i in range(count))
    batch += "".join(f"route del 198.18.{i}.0/24 dev eth0\n" for i in range(count))
    subprocess.run(["ip", "-n", ns, "-batch", "-"], input=batch, text=True, check=True)


def repair_seconds(delete: list[str], present: Callable[[], bool]) -> float:
    """Seconds from the deletion command's return until ``present()`` holds again (polled
    every 10 ms; 10 s at most)."""
    subprocess.run(delete, check=True)
    started = time.monotonic()
    assert poll_until(present, timeout=10, interval=0.01), "not repaired within 10 s"
    return time.monotonic() - started


def test_deleted_route_fdb_neighbour_come_back_in_a_fraction_of_a_second(make_lab) -> None:
    lab = make_lab(2)
    subnets = start_all(lab)
    a = lab.node_nss[0]
    lab.stop_daemon(a)  # again with a periodic pass too slow to be what repairs
    lab.start_daemon(a, "--reconcile-interval", "60")
    wait_for(lambda: lab.http(a, "/readyz")[0] == 200, what="daemon ready")
    mac_b = lab.leases()[str(subnets[1])]["BackendData"]["VtepMAC"]  # type: ignore[index]
    gw_b = str(subnets[1].network_address)
    kinds = {
        "route": (["ip", "-n", a, "route", "del", str(subnets[1])],
                  lambda: f"{subnets[1]} via" in ip(a, "route", "show", str(subnets[1]))),
        "fdb": (["bridge", "-n", a, "fdb", "del", str(mac_b), "dev", "flannel.1", "dst",
                 "192.0.2.11"], lambda: str(mac_b) in fdb(a)),
        "neighbour": (["ip", "-n", a, "neigh", "del", gw_b, "dev", "flannel.1"],
                      lambda: "PERMANENT" in ip(a, "neigh", "show", gw_b, "dev", "flannel.1")),
    }
    took: dict[str, list[float]] = {}
    for _round in range(3):
        for kind, (delete, present) in kinds.items():
            unrelated_churn(a)
            took.setdefault(kind, []).append(repair_seconds(delete, present))
    print("repair seconds:", {k: [round(t, 3) for t in v] for k, v in took.items()})
    for kind, times in took.items():
        assert sorted(times)[1] < REPAIR_MEDIAN_BOUND, f"{kind}: repaired after {times} s"
        assert max(times) < REPAIR_MAX_BOUND, f"{kind}: repaired after {times} s"


# --- the daemon's firewall rules (issue 9 item 9) -----------------------------------------------

FIREWALL_BOUND = 1.0  # seconds ("within about a second"); the periodic check is 60 s here


def test_removed_firewall_rules_come_back_within_a_second(make_lab) -> None:
    lab = make_lab(2)
    start_all(lab, "--firewall-interval", "60")
    a, b = lab.node_nss

    def nft(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", ns, "nft", *args], capture_output=True,
                              text=True)

    def table_back() -> bool:
        out = nft(a, "list", "table", "ip", "netweft").stdout
        return "masquerade fully-random" in out and "chain forward" in out

    took = []
    for delete in (["delete", "table", "ip", "netweft"],
                   ["flush", "chain", "ip", "netweft", "postrouting"],
                   ["delete", "chain", "ip", "netweft", "forward"]):
        took.append(repair_seconds(["ip", "netns", "exec", a, "nft", *delete], table_back))
    # iptables (nf_tables backend): the jump rule and our chain's rules come back too.
    lab.stop_daemon(b)
    lab.start_daemon(b, "--firewall", "iptables", "--firewall-interval", "60")
    wait_for(lambda: lab.http(b, "/readyz")[0] == 200, what="iptables daemon ready")

    def saved() -> str:
        return subprocess.run(["ip", "netns", "exec", b, "iptables-save", "-t", "nat"],
                              capture_output=True, text=True).stdout

    jump = "-A POSTROUTING -m comment --comment \"netweft masq\" -j NETWEFT-POSTRTG"
    wait_for(lambda: jump in saved(), what="iptables rules")
    took.append(repair_seconds(
        ["ip", "netns", "exec", b, "iptables", "-t", "nat", "-D", "POSTROUTING", "-m",
         "comment", "--comment", "netweft masq", "-j", "NETWEFT-POSTRTG"],
        lambda: jump in saved()))
    took.append(repair_seconds(
        ["ip", "netns", "exec", b, "iptables", "-t", "nat", "-F", "NETWEFT-POSTRTG"],
        lambda: "-A NETWEFT-POSTRTG -s 10.244.0.0/16" in saved()))
    print("firewall repair seconds:", [round(t, 3) for t in took])
    assert max(took) < FIREWALL_BOUND, took


# --- node state read at start is followed (issue 9 item 5) -------------------------------------

def test_device_and_public_side_changes_are_restored_or_republished(make_lab) -> None:
    lab = make_lab(2)
    subnets = start_all(lab)
    a, b = lab.node_nss
    mac = lab.leases()[str(subnets[0])]["BackendData"]["VtepMAC"]  # type: ignore[index]
    gw_a = str(subnets[0].network_address)

    def link(ns: str, dev: str = "flannel.1") -> str:
        return ip(ns, "link", "show", dev)

    # The VXLAN device's MAC, MTU and address, changed by hand, come back (peers keep working).
    subprocess.run(["ip", "-n", a, "link", "set", "flannel.1", "address", "02:11:22:33:44:55"],
                   check=True)
    wait_for(lambda: f"link/ether {mac} " in link(a), timeout=5, what="VTEP MAC restored")
    assert lab.leases()[str(subnets[0])]["BackendData"]["VtepMAC"] == mac  # type: ignore[index]
    subprocess.run(["ip", "-n", a, "link", "set", "flannel.1", "mtu", "1300"], check=True)
    wait_for(lambda: "mtu 1450 " in link(a), timeout=5, what="device MTU restored")
    subprocess.run(["ip", "-n", a, "addr", "flush", "dev", "flannel.1"], check=True)
    wait_for(lambda: f"inet {gw_a}/32" in ip(a, "addr", "show", "flannel.1"), timeout=5,
             what="device address restored")
    wait_for(lambda: underlay.ping(b, gw_a, src=str(subnets[1].network_address)), timeout=10,
             what="pod network reachable after the repairs")
    # The public interface's MTU: the device follows, and so does subnet.env.
    subprocess.run(["ip", "-n", a, "link", "set", "eth0", "mtu", "1400"], check=True)
    wait_for(lambda: "mtu 1350 " in link(a), timeout=5, what="device MTU follows eth0")

    def subnet_env() -> str:
        with open(lab.paths(a)["subnet_file"]) as f:
            return f.read()

    wait_for(lambda: "FLANNEL_MTU=1350" in subnet_env(), timeout=5, what="subnet.env MTU")
    # The public address: the lease is republished with it (same subnet), peers follow.
    subprocess.run(["ip", "netns", "exec", a, "sysctl", "-qw",
                    "net.ipv4.conf.eth0.promote_secondaries=1"], check=True)
    subprocess.run(["ip", "-n", a, "addr", "add", "192.0.2.20/24", "dev", "eth0"], check=True)
    subprocess.run(["ip", "-n", a, "addr", "del", "192.0.2.10/24", "dev", "eth0"], check=True)
    subprocess.run(["ip", "-n", a, "route", "replace", "default", "via", "192.0.2.1"],
                   check=True)
    wait_for(lambda: lab.leases()[str(subnets[0])]["PublicIP"] == "192.0.2.20", timeout=10,
             what="lease republished with the new public IP")
    assert lab.subnet(a) == subnets[0]
    assert "local 192.0.2.20" in ip(a, "-d", "link", "show", "flannel.1")
    wait_for(lambda: f"{mac} dst 192.0.2.20 self permanent" in fdb(b), timeout=10,
             what="the peer's FDB entry follows")
    wait_for(lambda: underlay.ping(b, gw_a, src=str(subnets[1].network_address)), timeout=10,
             what="pod network reachable at the new public IP")
    # While the daemon is down, a changed MAC shows in `netweft status`; a restart restores it
    # (it does not republish the hand-set one).
    assert lab.stop_daemon(a) == 0
    subprocess.run(["ip", "-n", a, "link", "set", "flannel.1", "address", "02:11:22:33:44:66"],
                   check=True)
    p = lab.paths(a)
    status = lab.netweft(a, "status", "--subnet-file", p["subnet_file"], "--state-dir",
                         p["state_dir"]).stdout
    assert f"MISMATCH        device flannel.1 has MAC 02:11:22:33:44:66, the lease publishes " \
           f"{mac}" in status, status
    lab.start_daemon(a, "--reconcile-interval", "1")
    wait_for(lambda: lab.http(a, "/readyz")[0] == 200, what="restarted daemon ready")
    wait_for(lambda: f"link/ether {mac} " in link(a), timeout=5, what="MAC restored at start")
    assert lab.leases()[str(subnets[0])]["BackendData"]["VtepMAC"] == mac  # type: ignore[index]
    assert "MISMATCH" not in lab.netweft(a, "status", "--subnet-file", p["subnet_file"],
                                         "--state-dir", p["state_dir"]).stdout
