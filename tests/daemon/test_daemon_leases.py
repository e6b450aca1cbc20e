"""Leases the daemon does not trust and leases it must keep (issue 9 items 4, 10, 11, 12), with
real daemons in node namespaces, a real etcd on the underlay and the real kernel.

- item 12: malformed, misfit and own-subnet-overlapping leases are never programmed;
- item 11: a node started with another node's public IP waits (fresh identity) or refuses
  (established identity) and never rewrites the victim's lease; a lease altered under a daemon
  is restored through the watch;
- item 4: after a public IP change and a restart the node keeps its subnet and VTEP MAC in one
  lease with the new PublicIP, and peers reach it again;
- item 10: pods wired by the in-process fallback while the daemon was down get their records
  when it starts.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from ipaddress import IPv4Network
from pathlib import Path

from netweft.cni.install import install  # noqa: E402
from netweft.cni.invoke import PluginCall, invoke  # noqa: E402
from support import underlay  # noqa: E402
from support.kernel import fdb, ip  # noqa: E402
from support.nodelab import NodeLab  # noqa: E402
from support.polling import poll_until, wait_for  # noqa: E402


def start(lab: NodeLab, ns: str, *extra: str) -> IPv4Network:
    lab.start_daemon(ns, "--reconcile-interval", "1", *extra)
    wait_for(lambda: lab.http(ns, "/readyz")[0] == 200, what=f"{ns} ready: " + lab.log(ns)[-800:])
    subnet = lab.subnet(ns)
    assert subnet is not None
    return subnet


def test_bad_leases_are_never_programmed_and_listed_invalid(make_lab) -> None:
    lab = make_lab(2)
    a, b = lab.node_nss
    sub_a, sub_b = start(lab, a), start(lab, b)
    wait_for(lambda: str(sub_b) in ip(a, "route"), what="peer route")
    supernet = sub_a.supernet()  # a /23 holding node a's own /24
    bad = {
        str(supernet): {"PublicIP": "192.0.2.77", "BackendType": "vxlan",
                        "BackendData": {"VNI": 1, "VtepMAC": "0e:00:00:00:00:77"}},
        "10.244.201.0/24": {"PublicIP": 3221225985, "BackendType": "vxlan",
                            "BackendData": {"VNI": 1, "VtepMAC": "0e:00:00:00:00:78"}},
        "10.244.202.0/24": {"PublicIP": "192.0.2.79", "BackendType": "vxlan",
                            "BackendData": {"VNI": 1, "VtepMAC": 1234}},
        "10.99.0.0/24": {"PublicIP": "192.0.2.80", "BackendType": "vxlan",
                         "BackendData": {"VNI": 1, "VtepMAC": "0e:00:00:00:00:80"}},
    }
    for subnet, value in bad.items():
        lab.put_lease(subnet, value)
    good = "10.244.203.0/24"
    lab.put_lease(good, {"PublicIP": "192.0.2.81", "BackendType": "vxlan",
                         "BackendData": {"VNI": 1, "VtepMAC": "0e:00:00:00:00:81"}})
    # The good lease added after the bad ones is programmed: the bad ones had their chance.
    wait_for(lambda: good in ip(a, "route"), what="the valid lease's route")
    routes = ip(a, "route")
    for subnet in (str(supernet), "10.244.201.0/24", "10.244.202.0/24", "10.99.0.0/24"):
        assert subnet not in routes, routes
    for mac in ("0e:00:00:00:00:77", "0e:00:00:00:00:78", "0e:00:00:00:00:80"):
        assert mac not in fdb(a)
    assert f"{sub_b} via {sub_b.network_address} dev flannel.1" in routes
    # Pods of node a still reach node b (nothing of ours goes into the tunnel wrongly).
    addr_a = lab.add_pod_stand_in(a, sub_a)
    addr_b = lab.add_pod_stand_in(b, sub_b)
    assert underlay.ping(a, addr_b.ip, src=addr_a.ip)
    log = lab.log(a)
    assert log.count(f"ignoring lease {supernet.network_address}-23") == 1, log[-3000:]
    assert f"SubnetLen: {supernet} is not a /24" in log
    listed = json.loads(lab.netweft(a, "leases", "list", "--json").stdout)
    invalid = {d.get("subnet") or d.get("key"): d.get("invalid") for d in listed
               if not d["valid"]}
    assert set(invalid) == {str(supernet), "10.244.201.0-24", "10.244.202.0-24",
                            "10.99.0.0/24"}, invalid
    # `netweft routes` compares the kernel with the valid leases only: all ok (exit 0).
    paths = lab.paths(a)
    r = lab.netweft(a, "routes", "--subnet-file", paths["subnet_file"], "--state-dir",
                    paths["state_dir"], check=False)
    assert r.returncode == 0 and "10.244.201.0" not in r.stdout, r.stdout + r.stderr


def test_intruder_with_a_peers_public_ip_never_takes_its_lease(make_lab, tmp_path: Path) -> None:
    lab = make_lab(3)
    a, b, intruder = lab.node_nss
    sub_a, _sub_b = start(lab, a), start(lab, b)
    before = lab.leases()[str(sub_a)]
    victim_ip = str(before["PublicIP"])
    # Fresh identity: waits for the victim's lease, never touches it.
    lab.start_daemon(intruder, "--public-ip", victim_ip)
    wait_for(lambda: "waits for that lease to expire" in lab.http(intruder, "/readyz")[1],
             what="the intruder waiting: " + lab.log(intruder)[-800:])
    assert lab.leases()[str(sub_a)] == before
    assert lab.stop_daemon(intruder) == 0
    # Established identity now: refuses to start with one line, exit 1.
    proc = lab.start_daemon(intruder, "--public-ip", victim_ip)
    assert proc.wait(timeout=60) == 1
    last = lab.log(intruder).strip().splitlines()[-1]
    assert last.startswith("netweft: public IP ") and "not this node" in last, last
    assert "--take-over-lease" in last
    assert lab.leases()[str(sub_a)] == before
    assert len(lab.leases()) == 2


def test_a_lease_altered_under_the_daemon_is_restored_through_the_watch(make_lab) -> None:
    lab = make_lab(2)
    a, b = lab.node_nss
    sub_a, sub_b = start(lab, a), start(lab, b)
    mine = lab.leases()[str(sub_a)]
    forged = {"PublicIP": "192.0.2.99", "BackendType": "vxlan",
              "BackendData": {"VNI": 1, "VtepMAC": "0e:00:00:00:00:99"}}
    lab.put_lease(str(sub_a), forged)  # etcdctl put: also detaches it from its etcd lease
    restored = poll_until(lambda: (lambda v: v if v.get("PublicIP") == mine["PublicIP"]
                                   and v["_lease"] else None)(lab.leases()[str(sub_a)]),
                          timeout=15)
    assert restored, lab.leases()[str(sub_a)]
    assert restored == {**mine, "_lease": restored["_lease"]}
    assert "was changed in etcd" in lab.log(a)
    # Peer b follows back to the real VTEP MAC and public IP.
    mac = str(mine["BackendData"]["VtepMAC"])  # type: ignore[index]
    wait_for(lambda: f"{mac} dst {mine['PublicIP']}" in fdb(b), what="peer FDB restored")
    addr_a = lab.add_pod_stand_in(a, sub_a)
    addr_b = lab.add_pod_stand_in(b, sub_b)
    assert underlay.ping(b, addr_a.ip, src=addr_b.ip)


def test_public_ip_change_keeps_subnet_and_mac_in_one_lease(make_lab) -> None:
    lab = make_lab(2)
    a, b = lab.node_nss
    sub_a, sub_b = start(lab, a), start(lab, b)
    before = lab.leases()[str(sub_a)]
    old_ip, mac = str(before["PublicIP"]), str(before["BackendData"]["VtepMAC"])  # type: ignore[index]
    new_ip = "192.0.2.41"
    assert lab.stop_daemon(a) == 0
    # The node's address changes (inside its own namespace), its default route stays.
    gateway = ip(a, "route", "show", "default").split()[2]
    subprocess.run(["ip", "-n", a, "addr", "del", f"{old_ip}/24", "dev", "eth0"], check=True)
    subprocess.run(["ip", "-n", a, "addr", "add", f"{new_ip}/24", "dev", "eth0"], check=True)
    subprocess.run(["ip", "-n", a, "route", "replace", "default", "via", gateway], check=True)
    assert start(lab, a) == sub_a
    leases = lab.leases()
    with_mac = [s for s, v in leases.items()
                if v.get("BackendData", {}).get("VtepMAC") == mac]  # type: ignore[union-attr]
    assert with_mac == [str(sub_a)] and len(leases) == 2
    assert leases[str(sub_a)]["PublicIP"] == new_ip
    wait_for(lambda: f"{mac} dst {new_ip}" in fdb(b), what="peer FDB follows the new IP")
    assert f"dst {old_ip}" not in fdb(b)
    addr_a = lab.add_pod_stand_in(a, sub_a)
    addr_b = lab.add_pod_stand_in(b, sub_b)
    assert underlay.ping(b, addr_a.ip, src=addr_b.ip)


def test_pods_wired_while_the_daemon_was_down_get_records_at_start(
        make_lab, netns_factory: Callable[[str], str], tmp_path: Path) -> None:
    lab = make_lab(1)
    ns = lab.node_nss[0]
    start(lab, ns)
    assert lab.stop_daemon(ns) == 0
    installed = install(str(tmp_path / "bin"), str(tmp_path / "net.d"))
    conf = {"cniVersion": "1.1.0", "name": "netweft", "type": "netweft",
            "subnetFile": lab.paths(ns)["subnet_file"], "dataDir": str(tmp_path / "ipam"),
            "socketPath": str(tmp_path / ns / "cni.sock"), "logFile": str(tmp_path / "cni.log")}
    cache = Path(tmp_path / ns / "cni-cache" / "results")
    cache.mkdir(parents=True, exist_ok=True)
    cids = [f"feed{i:04d}00001111" for i in range(3)]
    for i, cid in enumerate(cids):
        args = {"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": f"w-{i}",
                "NETWEFT_POD_LABELS": "app=w"}
        reply = invoke(PluginCall(installed.executable, "ADD", conf, container_id=cid,
                                  netns=f"/run/netns/{netns_factory('lpod')}", args=args,
                                  node_netns=ns))
        assert reply.exit_code == 0, reply.stdout + reply.stderr
        # what libcni (containerd, CRI-O, podman) caches after an ADD
        (cache / f"netweft-{cid}-eth0").write_text(json.dumps({
            "kind": "cniCacheV1", "containerId": cid, "ifName": "eth0",
            "networkName": "netweft", "cniArgs": [[k, v] for k, v in args.items()],
            "result": json.loads(reply.stdout)}))
    key = f"/netweft/pods/{ns}/"
    assert not lab.etcdctl("get", "--prefix", key)  # nobody told etcd
    start(lab, ns)
    wait_for(lambda: len(lab.etcdctl("get", "--prefix", key, "--keys-only").split()) == 3,
             timeout=20, what="three pod records")
    records = [json.loads(lab.etcdctl("get", key + cid, "--print-value-only")) for cid in cids]
    assert sorted(r["name"] for r in records) == ["w-0", "w-1", "w-2"]
    assert all(r["labels"] == {"app": "w"} and len(r["ips"]) == 1 for r in records)
    assert os.path.isdir(tmp_path / "ipam" / "netweft")
    # While the daemon runs, a pod wired in-process (socket unreachable) is picked up by the
    # periodic pass (--pod-sync-interval 1 here).
    assert lab.stop_daemon(ns) == 0
    start(lab, ns, "--pod-sync-interval", "1")
    cid = "feed999900001111"
    args = {"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "late", "NETWEFT_POD_LABELS": "a=b"}
    reply = invoke(PluginCall(installed.executable, "ADD",
                              {**conf, "socketPath": str(tmp_path / "nowhere.sock")},
                              container_id=cid, netns=f"/run/netns/{netns_factory('lpod')}",
                              args=args, node_netns=ns))
    assert reply.exit_code == 0, reply.stdout + reply.stderr
    (cache / f"netweft-{cid}-eth0").write_text(json.dumps({
        "kind": "cniCacheV1", "containerId": cid, "ifName": "eth0", "networkName": "netweft",
        "cniArgs": [[k, v] for k, v in args.items()], "result": json.loads(reply.stdout)}))
    # (a pass between the ADD and the cache write gives a record without labels first)
    wait_for(lambda: '"a": "b"' in lab.etcdctl("get", key + cid, "--print-value-only"),
             timeout=15, what="the late pod's record with its labels")


def test_reinstalled_node_waits_for_its_old_lease_unless_told_to_take_it_over(
        make_lab) -> None:
    import shutil

    lab = make_lab(2)
    a, b = lab.node_nss
    sub_a, _sub_b = start(lab, a), start(lab, b)
    old = lab.leases()[str(sub_a)]
    assert lab.stop_daemon(a) == 0
    shutil.rmtree(lab.paths(a)["state_dir"])  # "reinstalled": the identity is gone
    lab.start_daemon(a, "--reconcile-interval", "1")
    wait_for(lambda: "waits for that lease to expire" in lab.http(a, "/readyz")[1],
             what="the reinstalled node waiting: " + lab.log(a)[-800:])
    assert lab.leases()[str(sub_a)] == old
    assert lab.stop_daemon(a) == 0
    assert start(lab, a, "--take-over-lease") == sub_a
    now = lab.leases()[str(sub_a)]
    assert now["NetweftNodeID"] != old["NetweftNodeID"] and now["PublicIP"] == old["PublicIP"]
    assert len(lab.leases()) == 2
    assert "taking over" in lab.log(a)
