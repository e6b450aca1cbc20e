"""``netweft daemon --kube-subnet-mgr`` against the real control plane (kube-apiserver +
kube-controller-manager allocating podCIDRs), daemons in node namespaces authenticated with a
token of the manifests' ``netweft`` service account, no etcd given to them at all.

The control plane listens on the host's loopback; each node namespace gets a loopback relay to
it (``daemon/nsrelay.py``), so the daemons use the control plane's own URL and TLS name."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import ApiError, Client, KubeConfig
from lightkube.codecs import load_all_yaml
from lightkube.models.authentication_v1 import TokenRequestSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Node, ServiceAccountToken
from netweft.daemon import kubenode as kn
from netweft.daemon import netns
from netweft.daemon.controlplane import ControlPlane, kubeconfig
from netweft.daemon.nsrelay import NsRelay
from support import underlay
from support.nodelab import NodeLab
from support.polling import wait_for

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
NET_CONF = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}


class KubeNodes:
    """A NodeLab whose daemons run in kube mode against ``plane``."""

    def __init__(self, plane: ControlPlane, lab: NodeLab, workdir: Path) -> None:
        self.plane, self.lab, self.workdir = plane, lab, workdir
        self.relays: list[NsRelay] = []
        self.nodes: list[str] = []
        for ns in lab.node_nss:
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
            self.relays.append(NsRelay(ns, plane.port).start())
        self.admin = Client(KubeConfig.from_file(str(plane.admin_kubeconfig)), trust_env=False,
                            field_manager="netweft-tests")
        for name in ("00-namespace.yaml", "10-rbac.yaml"):  # server-side apply, as a user would
            for obj in load_all_yaml((MANIFESTS / name).read_text()):
                self.admin.apply(obj)
        self.kubeconfig = self.token_kubeconfig("netweft")
        self.net_conf = workdir / "net-conf.json"
        self.net_conf.write_text(json.dumps(NET_CONF))

    def token_kubeconfig(self, account: str) -> Path:
        """A kubeconfig with a bound token of ``netweft-system/account`` (what a pod's
        projected service-account token is)."""
        token = self.admin.create(ServiceAccountToken(metadata=ObjectMeta(), spec=TokenRequestSpec(
            audiences=[], expirationSeconds=3600)), account, namespace="netweft-system")
        assert token.status is not None and self.plane.pki is not None
        path = self.workdir / f"{account}.kubeconfig"
        path.write_text(kubeconfig(self.plane.url, self.plane.pki.ca_cert,
                                   token=token.status.token,
                                   user=f"system:serviceaccount:netweft-system:{account}"))
        return path

    def start(self, ns: str, kubeconfig_path: Path | None = None) -> None:
        self.lab.start_daemon(ns, "--kube-subnet-mgr", "--kubeconfig-file",
                              str(kubeconfig_path or self.kubeconfig),
                              "--net-conf-path", str(self.net_conf), "--reconcile-interval", "1",
                              store=())

    def create_node(self, name: str, **annotations: str) -> None:
        self.nodes.append(name)
        self.admin.create(Node(metadata=ObjectMeta(name=name, annotations=annotations)))

    def node(self, name: str) -> dict[str, Any] | None:
        try:
            return self.admin.get(Node, name).to_dict()  # type: ignore[no-any-return]
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise

    def delete_node(self, name: str) -> None:
        try:
            self.admin.delete(Node, name)
        except ApiError as exc:
            if exc.status.code != 404:
                raise

    def close(self) -> None:
        for ns in list(self.lab.procs):
            self.lab.stop_daemon(ns, timeout=5)
        for relay in self.relays:
            relay.stop()
        for name in self.nodes:
            self.delete_node(name)
        self.admin.close()


@pytest.fixture
def kube_nodes(control_plane: ControlPlane, make_lab: Callable[..., NodeLab],
               tmp_path: Path) -> Iterator[KubeNodes]:
    nodes = KubeNodes(control_plane, make_lab(2, config=False), tmp_path)
    try:
        yield nodes
    finally:
        nodes.close()


@pytest.fixture
def kube_nodes_no_ipam(control_plane_factory: Callable[..., ControlPlane],
                       make_lab: Callable[..., NodeLab], tmp_path: Path) -> Iterator[KubeNodes]:
    """Like ``kube_nodes`` on a private control plane without kube-controller-manager: Nodes
    get no podCIDR until the test sets one."""
    nodes = KubeNodes(control_plane_factory(controller_manager=False),
                      make_lab(1, config=False), tmp_path)
    try:
        yield nodes
    finally:
        nodes.close()


def ready(k: KubeNodes, ns: str) -> bool:
    return k.lab.http(ns, "/readyz")[0] == 200


def test_kube_mode_takes_podcidrs_publishes_flannel_annotations_and_pods_talk(
        kube_nodes: KubeNodes) -> None:
    k = kube_nodes
    a, b = k.lab.node_nss
    # Started before its Node exists: waits, saying so once.
    k.start(a)
    wait_for(lambda: "does not exist in the API yet" in k.lab.log(a), 30,
             what=f"the missing-node log line: {k.lab.log(a)[-800:]}")
    # b's operator says its public IP is another address it owns (a NAT'ed node would).
    subprocess.run(["ip", "-n", b, "addr", "add", "192.0.2.111/24", "dev", "eth0"], check=True)
    k.create_node(a)
    k.create_node(b, **{kn.PUBLIC_IP_OVERWRITE: "192.0.2.111"})
    k.start(b)
    for ns in (a, b):
        wait_for(lambda ns=ns: ready(k, ns), 60, what=f"{ns} ready: {k.lab.log(ns)[-800:]}")
        wait_for(lambda ns=ns: (k.lab.status(ns) or {}).get("peers") == 1, 30,
                 what=f"{ns} programs its peer: {k.lab.log(ns)[-800:]}")
    assert k.lab.log(a).count("does not exist in the API yet") == 1
    nodes = {ns: k.node(ns) for ns in (a, b)}
    for ns, node in nodes.items():
        assert node is not None
        notes = node["metadata"]["annotations"]
        # The subnet is the controller-manager's podCIDR.
        assert str(k.lab.subnet(ns)) == node["spec"]["podCIDR"]
        assert notes[kn.KUBE_MANAGED] == "true" and notes[kn.BACKEND_TYPE] == "vxlan"
        assert json.loads(notes[kn.BACKEND_DATA])["VtepMAC"]
        cond = kn.condition(node, "NetworkUnavailable")
        assert cond is not None and cond["status"] == "False", cond
    assert nodes[a]["metadata"]["annotations"][kn.PUBLIC_IP] == "192.0.2.10"  # type: ignore[index]
    assert nodes[b]["metadata"]["annotations"][kn.PUBLIC_IP] == "192.0.2.111"  # type: ignore[index]
    # a reaches b's VTEP at the overwritten address.
    mac_b = json.loads(nodes[b]["metadata"]["annotations"][kn.BACKEND_DATA])["VtepMAC"]  # type: ignore[index]
    fdb = subprocess.run(["bridge", "-n", a, "fdb", "show", "dev", "flannel.1"],
                         capture_output=True, text=True).stdout
    assert f"{mac_b} dst 192.0.2.111 self permanent" in fdb
    subnets = [k.lab.subnet(ns) for ns in (a, b)]
    addrs = [k.lab.add_pod_stand_in(ns, s) for ns, s in zip((a, b), subnets, strict=True)]  # type: ignore[arg-type]
    assert underlay.ping(a, addrs[1].ip, src=addrs[0].ip)
    assert underlay.ping(b, addrs[0].ip, src=addrs[1].ip)

    # A Node deleted from the API disappears from its peers' dataplane.
    route = f"{subnets[1]} via"

    def routes(ns: str) -> str:
        return subprocess.run(["ip", "-n", ns, "route"], capture_output=True, text=True).stdout

    assert route in routes(a)
    k.delete_node(b)
    wait_for(lambda: route not in routes(a), 30, what=f"{a} drops the deleted node's route")
    wait_for(lambda: (k.lab.status(a) or {}).get("peers") == 0, 30, what="no peer left")


def test_a_node_without_podcidr_waits_with_one_log_line_then_uses_the_one_it_gets(
        kube_nodes_no_ipam: KubeNodes) -> None:
    k = kube_nodes_no_ipam
    (a,) = k.lab.node_nss
    k.create_node(a)
    k.start(a)
    wait_for(lambda: "has no podCIDR yet" in k.lab.log(a), 30,
             what=f"the no-podCIDR log line: {k.lab.log(a)[-800:]}")
    time.sleep(3)  # several more looks at the Node (every 2 s) must not repeat the line
    assert not ready(k, a)
    k.admin.patch(Node, a, {"spec": {"podCIDR": "10.244.7.0/24",
                                     "podCIDRs": ["10.244.7.0/24"]}})
    wait_for(lambda: ready(k, a), 30, what=f"{a} ready: {k.lab.log(a)[-800:]}")
    assert str(k.lab.subnet(a)) == "10.244.7.0/24"
    assert k.lab.log(a).count("has no podCIDR yet") == 1
    cond = kn.condition(k.node(a) or {}, "NetworkUnavailable")
    assert cond is not None and cond["status"] == "False"


def test_a_token_without_the_node_rbac_is_one_error_line_and_exit_1(
        kube_nodes: KubeNodes) -> None:
    k = kube_nodes
    a = k.lab.node_nss[0]
    k.create_node(a)
    proxy_token = k.token_kubeconfig("netweft-proxy")  # may read Services, not Nodes
    k.start(a, proxy_token)
    proc = k.lab.procs[a]
    assert proc.wait(timeout=60) == 1
    log = k.lab.log(a)
    assert "kube-apiserver refused" in log and "HTTP 403" in log, log[-800:]
    assert "Traceback" not in log


def test_status_and_routes_read_the_nodes_in_kube_mode(kube_nodes: KubeNodes,
                                                        tmp_path: Path) -> None:
    """``netweft status`` / ``routes --kube-subnet-mgr``: the node's own view from the API (no
    etcd in the node namespace at all), the same options as the daemon."""
    k = kube_nodes
    a, b = k.lab.node_nss
    for ns in (a, b):
        k.create_node(ns)
        k.start(ns)
    for ns in (a, b):
        wait_for(lambda ns=ns: ready(k, ns), 60, what=f"{ns} ready: {k.lab.log(ns)[-800:]}")
    wait_for(lambda: (k.lab.status(a) or {}).get("peers") == 1, 30,
             what=f"{a} programs its peer: {k.lab.log(a)[-800:]}")
    sub_a, sub_b = k.lab.subnet(a), k.lab.subnet(b)
    p = k.lab.paths(a)
    local = ["--subnet-file", p["subnet_file"], "--state-dir", p["state_dir"]]
    kube = ["--kube-subnet-mgr", "--kubeconfig-file", str(k.kubeconfig),
            "--net-conf-path", str(k.net_conf), "--node-name", a]

    def netweft(*args: str) -> subprocess.CompletedProcess[str]:
        return netns.run(a, [sys.executable, "-m", "netweft.daemon.cli", *args], check=False)

    status = netweft("status", *local, *kube)
    assert status.returncode == 0, status.stderr
    rows = dict(line.split(None, 1) if not line.startswith("last ") else ("last", line)
                for line in status.stdout.splitlines())
    assert rows["store"] == f"kubernetes ({k.plane.url}) ok", status.stdout
    assert rows["lease"] == f"{sub_a} (public IP 192.0.2.10, expires with its Node)", status.stdout
    assert rows["peers"] == "1 leased, 1 programmed", status.stdout
    as_json = json.loads(netweft("status", "--json", *local, *kube).stdout)
    assert as_json["store"] == {"kind": "kubernetes", "where": f"kubernetes ({k.plane.url})",
                                "state": "ok"}
    assert as_json["lease"]["subnet"] == str(sub_a) and "etcd" not in as_json

    routes = netweft("routes", *local, *kube)
    assert routes.returncode == 0, routes.stdout + routes.stderr
    assert f"peer {sub_b} at 192.0.2.11" in routes.stdout
    report = json.loads(netweft("routes", "--json", *local, *kube).stdout)
    (peer,) = report["peers"]
    assert {e["kind"]: e["state"] for e in peer["entries"]} == {
        "neighbour": "ok", "fdb": "ok", "route": "ok"}

    # The daemon stopped (it would put the route back at once): a route deleted by hand shows.
    assert k.lab.stop_daemon(a) == 0
    subprocess.run(["ip", "-n", a, "route", "del", str(sub_b)], check=True)
    routes = netweft("routes", *local, *kube)
    assert routes.returncode == 3, routes.stdout + routes.stderr
    assert f"MISSING route     {sub_b} via" in routes.stdout
    assert "daemon          not running" in netweft("status", *local, *kube).stdout

    # Kubernetes-mode mistakes: one line naming the option, exit 1, no traceback.
    refused = tmp_path / "refused.kubeconfig"  # nothing listens on port 1 in the node namespace
    refused.write_text(k.kubeconfig.read_text().replace(k.plane.url, "https://127.0.0.1:1"))
    missing = tmp_path / "missing.kubeconfig"
    for args, line in (
            (["--kubeconfig-file", str(missing)],
             f"netweft: --kubeconfig-file: {missing} does not exist"),
            (["--kubeconfig-file", str(refused)],
             "netweft: cannot reach the kube-apiserver at https://127.0.0.1:1 ("),
            (["--node-name", "nwk-no-such-node"],
             "netweft: --node-name: node nwk-no-such-node does not exist in the API at "
             f"{k.plane.url}")):
        for command in ("status", "routes"):
            res = netweft(command, *local, *kube, *args)
            assert res.returncode == 1 and res.stdout == "", (command, args, res)
            assert res.stderr.startswith(line) and res.stderr.count("\n") == 1, \
                (command, args, res.stderr)
