"""``netweft routes`` / ``status``: which store they read (daemon/nodeview.py), and the one-line
errors of Kubernetes mode that need no API server (a missing kubeconfig or net-conf.json, a Node
without podCIDR). The commands against the real control plane: tests/daemon/test_daemon_kubesm.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from netweft.daemon import kubenode as kn
from netweft.daemon.cli import main
from netweft.daemon.nodeview import (
    EtcdSource,
    KubeSource,
    ViewError,
    lease_source,
    node_lease,
)
from netweft.kv.etcd import EtcdSettings

ETCD = EtcdSettings()


def no_etcd() -> EtcdSettings:
    raise AssertionError("kube mode must not ask for the etcd settings")


def test_kube_mode_names_the_node_as_the_daemon_does_and_never_touches_the_etcd_options() -> None:
    def pick(node_name: str | None, environ: dict[str, str]) -> object:
        return lease_source(True, "/k.conf", "/n.json", node_name, no_etcd, environ,
                            hostname=lambda: "host-a")

    assert pick("n1", {"NODE_NAME": "env-n"}) == KubeSource("n1", "/n.json", "/k.conf")
    assert pick(None, {"NODE_NAME": "env-n"}) == KubeSource("env-n", "/n.json", "/k.conf")
    assert pick(None, {}) == KubeSource("host-a", "/n.json", "/k.conf")


def test_without_kube_subnet_mgr_the_etcd_options_are_the_source() -> None:
    assert lease_source(False, "/k.conf", "/n.json", "n1", lambda: ETCD, {}) == EtcdSource(ETCD)


def node(annotations: dict[str, str], **spec: object) -> dict[str, object]:
    return {"metadata": {"name": "n1", "annotations": annotations}, "spec": spec}


FLANNEL = {kn.KUBE_MANAGED: "true", kn.BACKEND_TYPE: "vxlan", kn.PUBLIC_IP: "192.0.2.10",
           kn.BACKEND_DATA: '{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}'}


def test_own_lease_is_the_nodes_podcidr_with_flannels_annotations() -> None:
    lease = node_lease("n1", node(FLANNEL, podCIDR="10.244.3.0/24"))
    assert lease is not None
    assert (str(lease.subnet), str(lease.public_ip)) == ("10.244.3.0/24", "192.0.2.10")
    # podCIDR allocated, daemon not (yet) published: no lease, not an error
    assert node_lease("n1", node({}, podCIDR="10.244.3.0/24")) is None


def test_a_node_without_podcidr_is_one_line_naming_it() -> None:
    with pytest.raises(ViewError, match=r"^node n1 has no podCIDR \(kube-controller-manager"):
        node_lease("n1", node(FLANNEL))


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    res = CliRunner().invoke(main, list(args), env=env)
    return res.exit_code, res.stdout, res.stderr


@pytest.mark.parametrize("command", ["routes", "status"])
def test_a_missing_kubeconfig_file_is_one_line_and_exit_1(command: str, tmp_path: Path) -> None:
    missing = tmp_path / "nope.kubeconfig"
    code, out, err = run(command, "--state-dir", str(tmp_path), "--subnet-file",
                         str(tmp_path / "subnet.env"), "--kube-subnet-mgr",
                         "--kubeconfig-file", str(missing))
    assert (code, out) == (1, "")
    assert err == f"netweft: --kubeconfig-file: {missing} does not exist\n"


@pytest.mark.parametrize("command", ["routes", "status"])
def test_no_kubeconfig_anywhere_is_one_line_and_exit_1(command: str, tmp_path: Path) -> None:
    code, out, err = run(command, "--state-dir", str(tmp_path), "--subnet-file",
                         str(tmp_path / "subnet.env"), "--kube-subnet-mgr",
                         env={"KUBECONFIG": str(tmp_path / "none"), "NODE_NAME": "n1"})
    assert (code, out) == (1, "")
    assert err.startswith("netweft: no kubeconfig (") and err.count("\n") == 1, err
    assert err.endswith("; give --kubeconfig-file\n")


KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://192.0.2.1:6443"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


@pytest.mark.parametrize("command", ["routes", "status"])
def test_a_missing_net_conf_is_one_line_and_exit_1_before_any_api_call(
        command: str, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "k.conf"
    kubeconfig.write_text(KUBECONFIG)  # a documentation address: never contacted
    net_conf = tmp_path / "net-conf.json"
    code, out, err = run(command, "--state-dir", str(tmp_path), "--subnet-file",
                         str(tmp_path / "subnet.env"), "--kube-subnet-mgr", "--kubeconfig-file",
                         str(kubeconfig), "--net-conf-path", str(net_conf), "--node-name", "n1")
    assert (code, out) == (1, "")
    assert err == f"netweft: --net-conf-path: {net_conf} does not exist\n"
    net_conf.write_text('{"Network": "10.244.0.0/16", "SubnetLen": 40}')
    code, out, err = run(command, "--state-dir", str(tmp_path), "--kube-subnet-mgr",
                         "--kubeconfig-file", str(kubeconfig), "--net-conf-path", str(net_conf))
    assert (code, out) == (1, "")
    assert err.startswith(f"netweft: --net-conf-path: {net_conf}: SubnetLen") \
        and err.count("\n") == 1, err
