"""What ``netweft routes`` and ``netweft status`` compare the kernel against: the network config,
the leases the daemon would program and this node's own lease, read from the store the daemon
uses: etcd (Flannel's keys), or with ``--kube-subnet-mgr`` the Kubernetes API (Node objects,
through :class:`~netweft.daemon.kubesubnets.KubeSubnetManager`) and ``net-conf.json``.

:func:`lease_source` (pure) picks the store from the command's options; :func:`load` reads it.
Both paths keep only the leases :func:`~netweft.ipam.leasecheck.check_leases` lets the daemon
program. Errors: the etcd path reports an unreachable etcd in :attr:`NodeView.error` (``status``
still shows the local side); the Kubernetes path raises :class:`ViewError`, one line naming the
option, file or Node at fault (a missing kubeconfig, an unreachable or refusing apiserver, a
missing Node or one without podCIDR, a missing or invalid net-conf.json).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import TYPE_CHECKING, Any

from netweft.ipam.lease import Lease

if TYPE_CHECKING:
    from netweft.daemon.kubesubnets import KubeSubnetManager
    from netweft.kv.etcd import EtcdSettings

ETCD = "etcd"
KUBERNETES = "kubernetes"
KUBE_TIMEOUT = 10.0  # seconds for each call to the apiserver


@dataclass(frozen=True)
class EtcdSource:
    """Read the config and the leases from etcd (the global ``--etcd-*`` options)."""

    settings: EtcdSettings


@dataclass(frozen=True)
class KubeSource:
    """Read them as ``netweft daemon --kube-subnet-mgr`` does: ``node_name``'s Node and every
    Node's Flannel annotations through ``kubeconfig`` (None: in-cluster, then ``$KUBECONFIG``,
    then ``~/.kube/config``), the config from the file ``net_conf_path``."""

    node_name: str
    net_conf_path: str
    kubeconfig: str | None


LeaseSource = EtcdSource | KubeSource


def lease_source(kube_subnet_mgr: bool, kubeconfig: str | None, net_conf_path: str,
                 node_name: str | None, etcd: Callable[[], EtcdSettings],
                 environ: Mapping[str, str] = os.environ,
                 hostname: Callable[[], str] = socket.gethostname) -> LeaseSource:
    """The store the command reads, from the daemon's own options: Kubernetes with
    ``--kube-subnet-mgr`` (the node name as the daemon defaults it: ``--node-name``, else
    ``$NODE_NAME``, else the host name), else etcd (``etcd()`` gives its checked settings; it is
    not called in Kubernetes mode, so etcd options are neither checked nor needed there)."""
    from netweft.daemon.kubenode import node_name_or_default

    if kube_subnet_mgr:
        return KubeSource(node_name_or_default(node_name, environ, hostname), net_conf_path,
                          kubeconfig)
    return EtcdSource(etcd())


@dataclass
class NodeView:
    """``cfg``: the network config (None: none stored); ``leases``: the leases the daemon
    programs (valid ones, own included); ``own``: this node's lease (None: it has none);
    ``kind``: ``etcd`` or ``kubernetes``; ``store``: where they were read, for the reader
    (``etcd (http://...)``, ``kubernetes (https://...)``); ``error``: why the store could not be
    read (etcd path only; None: read)."""

    cfg: Any                 # NetworkConfig | None
    leases: list[Lease]
    own: Lease | None
    kind: str
    store: str
    error: str | None = None


class ViewError(Exception):
    """The store cannot be read; the message is one line naming the option, file or Node."""


def own_lease(leases: list[Lease], own_subnet: IPv4Network | None,
              public_ip: str | None) -> Lease | None:
    """etcd: our lease is the one of the subnet.env subnet, else the one holding our public IP."""
    own = next((le for le in leases if own_subnet is not None and le.subnet == own_subnet), None)
    if own is None and public_ip:
        own = next((le for le in leases if str(le.public_ip) == public_ip), None)
    return own


def programmable(cfg: Any, leases: list[Lease], own: Lease | None) -> list[Lease]:
    """What the daemon programs: the valid leases only (``ipam/leasecheck.py``); all of them
    while there is no config to check against."""
    if cfg is None:
        return leases
    from netweft.ipam.leasecheck import check_leases
    return check_leases(cfg, leases, own).valid


def load(source: LeaseSource, own_subnet: IPv4Network | None,
         public_ip: str | None) -> NodeView:
    """Read ``source``. ``own_subnet`` (subnet.env) and ``public_ip`` (the daemon's status file)
    find our lease in etcd; in Kubernetes mode our lease is our Node's. Raises ViewError
    (Kubernetes only)."""
    if isinstance(source, KubeSource):
        return load_kube(source)
    return load_etcd(source.settings, own_subnet, public_ip)


def load_etcd(s: EtcdSettings, own_subnet: IPv4Network | None,
              public_ip: str | None) -> NodeView:
    """The config and leases under ``s.prefix``; an unreachable etcd or a bad config is
    :attr:`NodeView.error`."""
    from netweft.ipam.config import ConfigError
    from netweft.ipam.leases import LeaseStore
    from netweft.kv.etcd import EtcdClient, EtcdError

    async def main() -> tuple[Any, list[Lease]]:
        async with EtcdClient(s, timeout=3.0) as etcd:
            etcd.connect()
            store = LeaseStore(etcd, s.prefix)
            cfg = await asyncio.wait_for(store.get_config(), 5)
            leases, _ = await asyncio.wait_for(store.list(with_expiry=True), 5)
            return cfg, leases

    where = f"{ETCD} ({','.join(s.endpoints)})"
    try:
        cfg, leases = asyncio.run(main())
    except (EtcdError, ConfigError, TimeoutError) as exc:
        return NodeView(None, [], None, ETCD, where, str(exc) or "etcd did not answer in time")
    own = own_lease(leases, own_subnet, public_ip)
    return NodeView(cfg, programmable(cfg, leases, own), own, ETCD, where)


def load_kube(source: KubeSource, timeout: float = KUBE_TIMEOUT) -> NodeView:
    """net-conf.json, our Node (its lease: podCIDR + Flannel's annotations; None while the
    daemon has published none) and every Node's lease, through ``KubeSubnetManager``. Raises
    ViewError."""
    from lightkube import ConfigError as KubeConfigError
    from netweft.daemon.kubesubnets import KubeSubnetManager

    mgr = KubeSubnetManager(source.node_name, source.net_conf_path, source.kubeconfig)
    try:
        server = mgr.api_server()
    except KubeConfigError as exc:
        raise ViewError(_kubeconfig_problem(source, exc)) from None
    try:
        cfg, node, leases = asyncio.run(_read_kube(mgr, timeout))
    except KubeConfigError as exc:
        raise ViewError(_kubeconfig_problem(source, exc)) from None
    except TimeoutError:
        raise ViewError(f"the kube-apiserver at {server} did not answer in {timeout:g}s") from None
    except ViewError:
        raise
    except Exception as exc:  # noqa: BLE001 - sorted into one line each below
        raise ViewError(_kube_problem(source, server, exc)) from None
    if node is None:
        raise ViewError(f"--node-name: node {source.node_name} does not exist in the API at "
                        f"{server}")
    own = node_lease(source.node_name, node)
    return NodeView(cfg, programmable(cfg, leases, own), own, KUBERNETES,
                    f"{KUBERNETES} ({server})")


async def _read_kube(mgr: KubeSubnetManager,
                     timeout: float) -> tuple[Any, dict[str, Any] | None, list[Lease]]:
    from netweft.ipam.config import ConfigError

    try:
        try:
            cfg = await mgr.get_network_config()
        except ConfigError as exc:
            raise ViewError(f"--net-conf-path: {mgr.net_conf}: {exc}") from None
        if cfg is None:
            raise ViewError(f"--net-conf-path: {mgr.net_conf} does not exist")
        node = await asyncio.wait_for(mgr.get_node(), timeout)
        leases, _ = await asyncio.wait_for(mgr.list_leases(), timeout)
        return cfg, node, leases
    finally:
        await mgr.close()


def node_lease(node_name: str, node: dict[str, Any]) -> Lease | None:
    """Our Node's lease (None: not annotated yet); ViewError when it has no podCIDR."""
    from netweft.daemon import kubenode

    try:
        v4, _ = kubenode.pod_cidrs(node)
    except ValueError as exc:
        raise ViewError(str(exc)) from None
    if v4 is None:
        raise ViewError(f"node {node_name} has no podCIDR (kube-controller-manager "
                        "allocates it: --allocate-node-cidrs --cluster-cidr)")
    return kubenode.node_to_lease(node)


def _kubeconfig_problem(source: KubeSource, exc: Exception) -> str:
    if source.kubeconfig:
        return f"--kubeconfig-file: {source.kubeconfig}: {exc}"
    return (f"no kubeconfig (no in-cluster service account, $KUBECONFIG or ~/.kube/config: "
            f"{exc}); give --kubeconfig-file")


def _kube_problem(source: KubeSource, server: str, exc: Exception) -> str:
    """One line for a failed API call: unreachable (Unavailable), refused (AgentError: token or
    RBAC) or anything else the client raised."""
    from netweft.daemon.errors import AgentError
    from netweft.daemon.subnetmgr import Unavailable

    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, Unavailable):
        why = first.removeprefix("kube-apiserver: ")
        return f"cannot reach the kube-apiserver at {server} ({why})"
    if isinstance(exc, AgentError):
        return first
    return f"reading Nodes from {server} as {source.kubeconfig or 'the default kubeconfig'}: " \
           f"{first}"
