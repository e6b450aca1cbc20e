"""Real flanneld nodes in the lab (``netweft lab up --flannel-nodes K``).

A flanneld node runs the real ``flanneld`` (built by ``deploy/flannel.sh``, paths in
``/var/cache/netweft/flannel.env``) inside the node's namespace against the lab's etcd, in etcd
mode, with ``--ip-masq``; its pods are wired by the reference ``bridge`` + ``host-local``
plugins from flanneld's ``subnet.env``, with the delegate config Flannel's own CNI plugin
builds (flannel-io/cni-plugin ``flannel_linux.go``: ``type: bridge``, ``isGateway: true``,
``ipMasq: !FLANNEL_IPMASQ``, ``mtu: FLANNEL_MTU``, IPAM ``host-local`` with the range
``FLANNEL_SUBNET`` and the route ``FLANNEL_NETWORK``; kube-flannel's conflist adds
``hairpinMode`` and ``isDefaultGateway``).

Pure functions build the command and the conflist; :func:`install_cni` writes files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network
from typing import Any

from netweft.common.atomicfile import write_atomic
from netweft.daemon.lab.topology import Node, Topology

ENV_FILE = "/var/cache/netweft/flannel.env"   # written by deploy/flannel.sh
DEBIAN_PLUGINS = "/usr/lib/cni"                # containernetworking-plugins 1.1.1 (apt)
REFERENCE_PLUGINS = ("bridge", "host-local", "portmap")
FLANNEL_CNI_NAME = "cbr0"                      # kube-flannel's network name
FLANNEL_CNI_VERSION = "0.3.1"                  # kube-flannel's cni-conf.json


class FlannelMissing(RuntimeError):
    """deploy/flannel.sh has not built flanneld (the message says how to build it)."""


@dataclass(frozen=True)
class FlannelBuild:
    flanneld: str        # the flanneld executable
    version: str         # e.g. "v0.28.10"
    plugins_dir: str     # current reference CNI plugins (bridge, host-local, portmap)
    plugins_version: str


def load_build(path: str = ENV_FILE) -> FlannelBuild:
    """The programs deploy/flannel.sh built. Raises :class:`FlannelMissing` (one line) when the
    file or a program in it is missing."""
    values: dict[str, str] = {}
    try:
        with open(path) as f:
            for line in f:
                key, sep, value = line.strip().partition("=")
                if sep:
                    values[key] = value
    except OSError:
        raise FlannelMissing(f"{path}: missing; run `bash deploy/flannel.sh` (or "
                             "deploy/setup.sh) to build flanneld") from None
    try:
        build = FlannelBuild(values["FLANNELD"], values["FLANNEL_VERSION"],
                             values["CNI_PLUGINS_DIR"], values["CNI_PLUGINS_VERSION"])
    except KeyError as exc:
        raise FlannelMissing(f"{path}: no {exc.args[0]}; rerun `bash deploy/flannel.sh`") from None
    for exe in (build.flanneld, *(os.path.join(build.plugins_dir, p) for p in REFERENCE_PLUGINS)):
        if not os.access(exe, os.X_OK):
            raise FlannelMissing(f"{path}: {exe} is not executable; rerun "
                                 "`bash deploy/flannel.sh`")
    return build


def flanneld_command(flanneld: str, topo: Topology, node: Node, kubeconfig: str | None = None,
                     net_conf: str | None = None) -> list[str]:
    """flanneld on ``node``: in etcd mode the lab's etcd and prefix; with ``kubeconfig`` and
    ``net_conf`` (the lab's Kubernetes mode) ``--kube-subnet-mgr`` on that kubeconfig and
    net-conf.json (its node name comes from ``$NODE_NAME``, :func:`flanneld_env`). Always the
    node's eth0 and its own subnet.env, masquerade for traffic leaving the pod network (as
    kube-flannel runs it)."""
    if kubeconfig is not None and net_conf is not None:
        store = ["--kube-subnet-mgr", f"--kubeconfig-file={kubeconfig}",
                 f"--net-config-path={net_conf}"]
    else:
        store = [f"--etcd-endpoints={topo.etcd_endpoint}",
                 f"--etcd-prefix={topo.spec.etcd_prefix}"]
    return [
        flanneld,
        *store,
        "--iface=eth0",
        f"--public-ip={node.ip}",
        f"--subnet-file={node.subnet_env}",
        "--ip-masq",
    ]


def flanneld_env(node: Node) -> dict[str, str]:
    """flanneld's environment on ``node``: ``NODE_NAME`` names its Node in Kubernetes mode
    (flannel pkg/subnet/kube/kube.go: NODE_NAME, else POD_NAME + POD_NAMESPACE looked up)."""
    return dict(os.environ, NODE_NAME=node.name)


def parse_subnet_env(text: str) -> dict[str, str]:
    """``KEY=value`` lines of a subnet.env (Flannel's format) as a dict."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key:
            out[key] = value
    return out


def bridge_conflist(env: dict[str, str], data_dir: str) -> dict[str, Any]:
    """The conflist a flanneld node's pods are wired with: Flannel's CNI plugin's delegation to
    ``bridge`` written out (see the module docstring). ``data_dir`` is host-local's per-node
    allocation directory (lab nodes share one filesystem). Raises KeyError/ValueError for a
    subnet.env without FLANNEL_NETWORK/FLANNEL_SUBNET/FLANNEL_MTU."""
    subnet = IPv4Interface(env["FLANNEL_SUBNET"]).network
    network = IPv4Network(env["FLANNEL_NETWORK"])
    ipmasq = env.get("FLANNEL_IPMASQ", "false") == "true"
    return {
        "name": FLANNEL_CNI_NAME,
        "cniVersion": FLANNEL_CNI_VERSION,
        "plugins": [{
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": True,
            "isDefaultGateway": True,
            "hairpinMode": True,
            "ipMasq": not ipmasq,
            "mtu": int(env["FLANNEL_MTU"]),
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": str(subnet)}]],
                "routes": [{"dst": str(network)}],
                "dataDir": data_dir,
            },
        }],
    }


def install_cni(node: Node, plugins_dir: str = DEBIAN_PLUGINS) -> dict[str, Any]:
    """Link the reference plugins into the node's CNI bin dir and write its conflist from the
    node's subnet.env (which flanneld wrote). Returns the conflist. Raises OSError, KeyError,
    ValueError."""
    with open(node.subnet_env) as f:
        env = parse_subnet_env(f.read())
    conflist = bridge_conflist(env, node.cni_data_dir)
    for d in (node.cni_bin_dir, node.cni_conf_dir, node.cni_data_dir):
        os.makedirs(d, exist_ok=True)
    for name in REFERENCE_PLUGINS:
        link = os.path.join(node.cni_bin_dir, name)
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(os.path.join(plugins_dir, name), link)
    write_atomic(node.conflist_path, json.dumps(conflist, indent=1))
    return conflist
