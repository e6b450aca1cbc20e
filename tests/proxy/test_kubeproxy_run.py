"""The runner of the real kube-proxy (daemon/kubeproxy_run.py): its configuration leaves every
host-wide knob alone, and the real program, run against the real apiserver, programs its rules
in the node namespace we gave it and nowhere else, and stops by its PID."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from netweft.daemon.controlplane import ControlPlane  # noqa: E402
from netweft.daemon.kubeproxy_run import (  # noqa: E402
    SYNC_METRIC,
    KubeProxy,
    KubeProxyError,
    KubeProxySettings,
    config_document,
    metric,
    node_with_address,
    proxier_kubeconfig,
)
from support.kube_cluster import unique  # noqa: E402

NODE_IP = "192.0.2.11"


def test_config_leaves_conntrack_size_and_timeouts_alone() -> None:
    doc = config_document(KubeProxySettings("n1", NODE_IP, Path("/k"), mode="iptables",
                                            healthz_port=1, metrics_port=2))
    assert doc["conntrack"] == {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                                "tcpCloseWaitTimeout": "0s"}
    assert doc["mode"] == "iptables" and doc["hostnameOverride"] == "n1"
    assert doc["healthzBindAddress"] == "0.0.0.0:1"
    assert doc["metricsBindAddress"] == "127.0.0.1:2"
    assert doc["clientConnection"]["kubeconfig"] == "/k"  # type: ignore[index]
    assert doc["nftables"] == {"minSyncPeriod": "1000000us", "syncPeriod": "30000000us"}


def test_config_sync_periods_are_go_durations() -> None:
    doc = config_document(KubeProxySettings("n1", NODE_IP, Path("/k"), min_sync_period=1e-5,
                                            sync_period=0.25))
    assert doc["iptables"] == {"minSyncPeriod": "10us", "syncPeriod": "250000us"}


def test_config_rejects_an_unknown_mode() -> None:
    with pytest.raises(KubeProxyError, match="mode: 'ipvs'"):
        config_document(KubeProxySettings("n1", NODE_IP, Path("/k"), mode="ipvs"))


def test_metric_reads_labelled_samples() -> None:
    text = (f'# HELP x\n{SYNC_METRIC}{{ip_family="IPv6"}} 5\n'
            f'{SYNC_METRIC}{{ip_family="IPv4"}} 1.7e+09\nplain 3\n')
    assert metric(text, SYNC_METRIC, ip_family="IPv4") == 1.7e9
    assert metric(text, "plain") == 3
    assert metric(text, "absent") is None


def root_state() -> tuple[str, str]:
    nft = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True)
    ipt = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True)
    return nft.stdout, "\n".join(line for line in ipt.stdout.splitlines()
                                 if not line.startswith("#"))


@pytest.mark.parametrize("mode", ["nftables", "iptables"])
def test_kube_proxy_programs_only_its_own_namespace(
        mode: str, control_plane: ControlPlane, netns_factory: Callable[[str], str],
        tmp_path: Path) -> None:
    ns = netns_factory("kpr")
    for cmd in (["link", "add", "eth0", "type", "veth", "peer", "name", "eth1"],
                ["addr", "add", f"{NODE_IP}/24", "dev", "eth0"], ["link", "set", "eth0", "up"]):
        subprocess.run(["ip", "-n", ns, *cmd], check=True)
    node = unique("kpr-node")
    node_with_address(control_plane, node, NODE_IP)
    name = unique("kpr-svc")
    control_plane.kubectl("create", "service", "clusterip", name, "--tcp=80:8080")
    cluster_ip = control_plane.kubectl("get", "service", name, "-o",
                                       "jsonpath={.spec.clusterIP}").strip()
    before = root_state()
    proxy = KubeProxy(ns, KubeProxySettings(
        node, NODE_IP, proxier_kubeconfig(control_plane, tmp_path / "kp.kubeconfig"),
        mode=mode), relay_port=control_plane.port, workdir=tmp_path)
    try:
        proxy.start()
        pid = proxy.pid
        proxy.wait_synced(timeout=90)
        dump = ["nft", "list", "ruleset"] if mode == "nftables" else ["iptables-save"]
        rules = subprocess.run(["ip", "netns", "exec", ns, *dump], capture_output=True,
                               text=True, check=True).stdout
        assert cluster_ip in rules, rules
        assert root_state() == before
    finally:
        proxy.stop()
        control_plane.kubectl("delete", "service", name)
    assert pid is not None and not os.path.exists(f"/proc/{pid}")
    assert not proxy.running()
