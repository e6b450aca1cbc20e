"""The Kubernetes subnet manager (``netweft daemon --kube-subnet-mgr``), Flannel's
``pkg/subnet/kube``: no etcd; the network config is a mounted ``net-conf.json``
(``/etc/kube-flannel/net-conf.json``), this node's subnet is its ``spec.podCIDR(s)`` allocated by
kube-controller-manager (``--allocate-node-cidrs --cluster-cidr``), leases are published as
Flannel's node annotations (``daemon/kubenode.py``) through the ``nodes/status`` subresource,
and peers come from a list + watch of every Node.

Errors: :class:`~netweft.daemon.subnetmgr.Unavailable` when the API cannot be reached or answers
5xx/429; ``AgentError`` when it refuses (401/403/422: token or RBAC); ``ConfigError`` for an
invalid net-conf.json; ``LeaseError`` when the podCIDR lies outside the configured Network
(Flannel refuses the same).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, TypeVar

from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.resources.core_v1 import Node as KubeNode
from lightkube.types import PatchType
from netweft.common import defaults
from netweft.daemon import kubenode
from netweft.daemon.errors import AgentError
from netweft.daemon.subnetmgr import LeaseAttrs, Unavailable
from netweft.ipam.config import NetworkConfig, parse_config
from netweft.ipam.lease import Lease
from netweft.ipam.leases import LeaseError, LeaseEvent

log = logging.getLogger("netweft.agent")

DEFAULT_NET_CONF = defaults.NET_CONF_PATH
T = TypeVar("T")


def _transient(exc: BaseException) -> bool:
    """A failure worth retrying: 5xx/429 answers, and transport errors (lightkube's HTTP
    library, httpx2, is recognised by its module name, without importing it: it is
    lightkube's dependency, not ours)."""
    if isinstance(exc, ApiError):
        code = exc.status.code
        return code is None or code >= 500 or code == 429
    if isinstance(exc, OSError):
        return True
    return type(exc).__module__.split(".")[0].startswith("httpx")


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


async def _guard(call: Awaitable[T]) -> T:
    """``await call``; transient failures become Unavailable, an API refusal (401, 403, 422...)
    an AgentError naming it (a wrong token or RBAC rule: the operator must act)."""
    try:
        return await call
    except ApiError as exc:
        if _transient(exc):
            raise Unavailable(f"kube-apiserver: {_first_line(exc)}") from exc
        if exc.status.code == 404:
            raise
        raise AgentError(f"kube-apiserver refused: {_first_line(exc)} "
                         f"(HTTP {exc.status.code}; check the kubeconfig/token and RBAC)") from None
    except Exception as exc:
        if _transient(exc):
            raise Unavailable(f"kube-apiserver: {_first_line(exc)}") from exc
        raise


def _dict(obj: Any) -> kubenode.Node:
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


class KubeSubnetManager:
    """``SubnetManager`` on the Kubernetes API for the Node ``node_name``.

    ``kubeconfig``: a kubeconfig file; None: in-cluster (service-account token), then
    ``$KUBECONFIG``, then ``~/.kube/config`` (lightkube's ``KubeConfig.from_env``).
    ``net_conf``: path of net-conf.json. ``retry``: seconds between looks while the Node is
    missing or has no podCIDR."""

    def __init__(self, node_name: str, net_conf: str = DEFAULT_NET_CONF,
                 kubeconfig: str | None = None, retry: float = 2.0,
                 watch_timeout: int = 300) -> None:
        self.node_name = node_name
        self.net_conf = net_conf
        self.kubeconfig = kubeconfig
        self.retry = retry
        self.watch_timeout = watch_timeout
        self._config: KubeConfig | None = None
        self._client: AsyncClient | None = None
        self._listed: dict[str, Lease] = {}  # node name -> lease, as of the last listing

    @property
    def config(self) -> KubeConfig:
        """The kubeconfig (read on first use). Raises lightkube.ConfigError for a missing or
        unreadable one."""
        if self._config is None:
            self._config = (KubeConfig.from_file(self.kubeconfig) if self.kubeconfig
                            else KubeConfig.from_env())
        return self._config

    @property
    def client(self) -> AsyncClient:
        """The API client (made on first use, inside the running loop). Raises
        lightkube.ConfigError for an unreadable kubeconfig."""
        if self._client is None:
            self._client = AsyncClient(config=self.config, trust_env=False)
        return self._client

    def api_server(self) -> str:
        """The API server's URL from the kubeconfig's current context (``https://host:port``),
        for messages. Raises lightkube.ConfigError as :attr:`config` does."""
        current = self.config.get()
        return current.cluster.server if current is not None else "?"

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def describe_config(self) -> str:
        return self.net_conf

    async def get_network_config(self) -> NetworkConfig | None:
        """net-conf.json (Flannel's format); None while the file is absent."""
        try:
            text = Path(self.net_conf).read_text()
        except FileNotFoundError:
            return None
        return parse_config(text)

    async def get_node(self) -> kubenode.Node | None:
        """Our Node as a dict; None when it does not exist. Raises Unavailable."""
        try:
            return _dict(await _guard(self.client.get(KubeNode, self.node_name)))
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise

    async def public_ip_overwrite(self) -> IPv4Address | None:
        """The ``public-ip-overwrite`` annotation of our Node (None: none, or no Node yet).
        Raises Unavailable while the API server cannot be reached."""
        node = await self.get_node()
        return kubenode.overwrite_ip(node) if node else None

    async def _list(self) -> tuple[dict[str, Lease], str]:
        nodes = self.client.list(KubeNode)
        leases: dict[str, Lease] = {}
        async for obj in nodes:
            node = _dict(obj)
            lease = kubenode.node_to_lease(node)
            if lease is not None:
                leases[kubenode.name_of(node)] = lease
        return leases, str(nodes.resourceVersion)

    async def list_leases(self) -> tuple[list[Lease], int]:
        leases, version = await _guard(self._list())
        self._listed = leases
        return list(leases.values()), int(version)

    async def _wait_for_pod_cidr(self) -> tuple[kubenode.Node, IPv4Network]:
        announced = ""
        while True:
            node = await self.get_node()
            v4 = kubenode.pod_cidrs(node)[0] if node else None
            if node is not None and v4 is not None:
                return node, v4
            why = (f"node {self.node_name} does not exist in the API yet; waiting" if node is None
                   else f"node {self.node_name} has no podCIDR yet; waiting for "
                        "kube-controller-manager to allocate one (--allocate-node-cidrs "
                        "--cluster-cidr)")
            if why != announced:
                log.warning("%s", why)
                announced = why
            await asyncio.sleep(self.retry)

    async def acquire_lease(self, cfg: NetworkConfig, attrs: LeaseAttrs,
                            previous: IPv4Network | None) -> Lease:
        """Wait for our Node's podCIDR, publish the annotations, return the lease
        (``previous`` is not used: the subnet is the controller-manager's choice)."""
        node, subnet = await self._wait_for_pod_cidr()
        if cfg.network is None or not subnet.subnet_of(cfg.network):
            raise LeaseError(f"{self.net_conf}: Network {cfg.network} does not contain the "
                             f"podCIDR {subnet} of node {self.node_name} (match "
                             "kube-controller-manager's --cluster-cidr)")
        return await self._publish(node, subnet, attrs)

    async def _publish(self, node: kubenode.Node, subnet: IPv4Network,
                       attrs: LeaseAttrs) -> Lease:
        desired = kubenode.desired_annotations(node, attrs.public_ip, attrs.backend_type,
                                               dict(attrs.backend_data))
        patch = kubenode.annotation_patch(node, desired)
        if patch is not None:  # Flannel patches through the status subresource
            await _guard(self.client.patch(KubeNode.Status, self.node_name, patch,
                                           patch_type=PatchType.MERGE))
        lease = kubenode.node_to_lease({**node, "metadata": {
            **node.get("metadata", {}), "annotations": {**kubenode.annotations_of(node),
                                                        **desired}}})
        assert lease is not None and lease.subnet == subnet
        return lease

    async def renew_lease(self, lease: Lease) -> Lease:
        """Nothing to renew: the lease lives as long as the Node (Flannel: unimplemented)."""
        return lease

    async def update_lease(self, lease: Lease, attrs: LeaseAttrs) -> Lease:
        node = await self.get_node()
        if node is None:
            raise Unavailable(f"node {self.node_name} is gone")
        assert lease.subnet is not None
        return await self._publish(node, lease.subnet, attrs)

    async def complete_lease(self) -> None:
        """The dataplane is up: set our Node's ``NetworkUnavailable`` condition to False
        (Flannel's ``CompleteLease``). Raises Unavailable."""
        await _guard(self.client.patch(KubeNode.Status, self.node_name,
                                       kubenode.network_available_patch(),
                                       patch_type=PatchType.STRATEGIC))

    def lease_key(self, lease: Lease) -> str:
        return lease.key_name

    async def ping(self) -> None:
        """Raises Unavailable (a missing Node is an answer: the API is up)."""
        await self.get_node()

    async def watch_leases(self, leases: list[Lease], revision: int,
                           retry_delay: float) -> AsyncIterator[list[LeaseEvent]]:
        """Lease events from a watch of every Node after ``revision`` (relative to the last
        :meth:`list_leases`); any error (410 Gone included) is followed by a fresh listing
        whose difference is reported. Never ends."""
        known = dict(self._listed)
        version = str(revision)
        while True:
            try:
                async for kind, obj in self.client.watch(
                        KubeNode, resource_version=version, server_timeout=self.watch_timeout):
                    node = _dict(obj)
                    version = str((node.get("metadata") or {}).get("resourceVersion") or version)
                    name = kubenode.name_of(node)
                    new = None if kind == "DELETED" else kubenode.node_to_lease(node)
                    events = _node_events(known.get(name), new)
                    if new is None:
                        known.pop(name, None)
                    else:
                        known[name] = new
                    if events:
                        yield events
            except Exception as exc:  # noqa: BLE001 - any break of the watch: list again
                log.warning("watching Nodes: %s; listing again", _first_line(exc))
            while True:
                await asyncio.sleep(retry_delay)
                try:
                    fresh, version = await _guard(self._list())
                    break
                except Exception as exc:  # noqa: BLE001 - keep retrying
                    log.warning("listing Nodes: %s; retrying", exc)
            events = []
            for name in known.keys() | fresh.keys():
                events += _node_events(known.get(name), fresh.get(name))
            known = fresh
            self._listed = fresh
            if events:
                yield events


def _node_events(old: Lease | None, new: Lease | None) -> list[LeaseEvent]:
    """Lease events turning one Node's ``old`` lease into ``new`` (either may be None)."""
    if new is None:
        return [LeaseEvent("removed", old)] if old is not None else []
    if old is not None and old.key_name == new.key_name and old.value() == new.value():
        return []
    events = []
    if old is not None and old.key_name != new.key_name:
        events.append(LeaseEvent("removed", old))
    events.append(LeaseEvent("added", new))
    return events
