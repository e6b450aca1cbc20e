"""The lab's Kubernetes mode (``netweft lab up --control-plane kubernetes``).

The real control plane (etcd 3.6 + kube-apiserver + kube-controller-manager with
``--allocate-node-cidrs --cluster-cidr=<lab network>``, built by deploy/controlplane.sh, driven by
:class:`netweft.daemon.controlplane.ControlPlane`) runs inside the lab's control-plane namespace
(``<prefix>-etcd``, ``192.0.2.2``): etcd on that namespace's loopback, the apiserver on
``192.0.2.2:<port>`` (and its loopback), with its certificate naming ``192.0.2.2``. Nodes reach it
over the underlay, as real nodes reach theirs; nothing listens in the root namespace.

The lab applies ``deploy/kubernetes/00-namespace.yaml`` and ``10-rbac.yaml`` (server-side apply,
nothing more) and hands each node's ``netweft daemon --kube-subnet-mgr`` a bound token of the
``netweft`` service account and each ``netweft proxy --source kube`` one of ``netweft-proxy``.
Everything else the lab writes (Nodes, Pods, their status as a kubelet reports it, the
Service) it writes as the cluster admin. The Python process running a lab command enters the
control-plane namespace for its own API calls (:func:`in_netns`, one thread only).

Errors: :class:`KubeLabError` (one line naming the file, object or log).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lightkube import ApiError, Client, KubeConfig
from lightkube.codecs import load_all_yaml
from lightkube.models.authentication_v1 import TokenRequestSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Node as KubeNode
from lightkube.resources.core_v1 import Pod as KubePod
from lightkube.resources.core_v1 import Service, ServiceAccountToken
from lightkube.resources.discovery_v1 import EndpointSlice
from lightkube.types import PatchType
from netweft.cni import nsenter
from netweft.daemon import kubenode as kn
from netweft.daemon import netns
from netweft.daemon.controlplane import ControlPlane, ControlPlaneError, kubeconfig
from netweft.daemon.lab.topology import (
    ETCD_IP,
    SERVICE_NAME,
    SERVICE_NODE_PORT,
    SERVICE_PORT,
    SYSTEM_NAMESPACE,
    WHOAMI_PORT,
    KubePaths,
    Pod,
    Topology,
    network_config,
)

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
RBAC_MANIFESTS = ("00-namespace.yaml", "10-rbac.yaml")
POD_NAMESPACE = "default"               # the lab's pods (CNI_ARGS K8S_POD_NAMESPACE)
TOKEN_SECONDS = 7 * 24 * 3600           # the lab's tokens outlive any lab session
FIELD_MANAGER = "netweft-lab"


class KubeLabError(RuntimeError):
    """A Kubernetes-mode lab step failed (one line)."""


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the block with the calling thread inside namespace ``name`` (sockets made there stay
    there); always come back."""
    fd = nsenter.open_netns(netns.netns_path(name))
    try:
        with nsenter.entered(fd):
            yield
    finally:
        os.close(fd)


def start_control_plane(topo: Topology) -> tuple[KubePaths, dict[str, int]]:
    """Start etcd + kube-apiserver + kube-controller-manager in ``topo``'s control-plane
    namespace (cluster CIDR = the lab network, node CIDR mask = its subnet length) and wait for
    them; write the RBAC, tokens and net-conf.json. Returns the paths and the PIDs by
    :data:`KUBE_PROCESSES` (the caller records them). Raises :class:`KubeLabError`; on failure
    the processes started are stopped."""
    spec = topo.spec
    workdir = Path(topo.state_dir) / "kube"
    workdir.mkdir(parents=True, exist_ok=True)
    plane = ControlPlane(cluster_cidr=str(spec.network), node_cidr_mask=spec.subnet_len,
                         workdir=workdir, serving_ips=(str(ETCD_IP),), detached=True)
    try:
        with in_netns(topo.etcd_ns):
            plane.start()
    except (ControlPlaneError, RuntimeError, OSError) as exc:
        raise KubeLabError(f"control plane: {exc}") from None
    assert plane.etcd is not None and plane.apiserver is not None and plane.kcm is not None
    pids = {"kube-etcd": plane.etcd.pid, "kube-apiserver": plane.apiserver.pid,
            "kube-controller-manager": plane.kcm.pid}
    paths = KubePaths(str(workdir), plane.port)
    Path(paths.net_conf).write_text(json.dumps(network_config(spec)))
    return paths, {k: v for k, v in pids.items() if v is not None}


class KubeApi:
    """The lab's admin view of its API (lightkube's sync client, calls made inside the
    control-plane namespace). Use as a context manager; every method may raise
    :class:`KubeLabError`."""

    def __init__(self, topo: Topology, paths: KubePaths) -> None:
        self.topo, self.paths = topo, paths
        try:
            config = KubeConfig.from_file(paths.admin_kubeconfig)
        except (OSError, ValueError) as exc:
            raise KubeLabError(f"{paths.admin_kubeconfig}: {exc}") from None
        self.client = Client(config=config, trust_env=False, field_manager=FIELD_MANAGER)

    def __enter__(self) -> KubeApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()

    @contextlib.contextmanager
    def _call(self, what: str) -> Iterator[None]:
        try:
            with in_netns(self.topo.etcd_ns):
                yield
        except ApiError as exc:
            raise KubeLabError(f"{what}: kube-apiserver: {exc.status.message}") from None
        except OSError as exc:  # nsenter.NetnsGone is one: the lab's namespace is gone
            raise KubeLabError(f"{what}: {exc}") from None
        except Exception as exc:
            # lightkube's transport errors (unreachable, TLS): its HTTP library (httpx2) is
            # recognised by module name, as daemon/kubesubnets.py does: lightkube's
            # dependency, not ours
            if type(exc).__module__.split(".")[0].startswith("httpx"):
                raise KubeLabError(f"{what}: {paths_hint(self.paths)}: {exc}") from None
            raise

    # ---- RBAC and tokens ------------------------------------------------------------------
    def apply_rbac(self) -> None:
        """Server-side apply of the manifests' namespace, service accounts and RBAC."""
        for name in RBAC_MANIFESTS:
            path = MANIFESTS / name
            try:
                objects = load_all_yaml(path.read_text())
            except OSError as exc:
                raise KubeLabError(f"{path}: {exc.strerror} (the lab needs the repository's "
                                   "deploy/kubernetes)") from None
            with self._call(f"apply {path.name}"):
                for obj in objects:
                    self.client.apply(obj)

    def write_token_kubeconfig(self, account: str, path: str) -> None:
        """A kubeconfig at ``path`` with a bound token of ``netweft-system/account`` (what a
        DaemonSet pod's projected token is), pointing at the apiserver over the underlay."""
        request = ServiceAccountToken(metadata=ObjectMeta(), spec=TokenRequestSpec(
            audiences=[], expirationSeconds=TOKEN_SECONDS))
        with self._call(f"token for {account}"):
            token = self.client.create(request, account, namespace=SYSTEM_NAMESPACE)
        assert token.status is not None
        Path(path).write_text(kubeconfig(
            self.paths.server, Path(self.paths.ca_cert), token=token.status.token,
            user=f"system:serviceaccount:{SYSTEM_NAMESPACE}:{account}"))

    # ---- nodes ----------------------------------------------------------------------------
    def create_node(self, name: str, pod_cidr: str | None = None,
                    annotations: dict[str, str] | None = None) -> None:
        """Register Node ``name`` (what a kubelet does; the controller-manager's node IPAM then
        gives it a podCIDR, unless ``pod_cidr`` sets one, which it then marks as taken).
        ``annotations``: e.g. Flannel's, as a node's agent would have published them. An
        existing Node is kept."""
        obj: dict[str, Any] = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "annotations": annotations or {},
                         "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}}}
        if pod_cidr is not None:
            obj["spec"] = {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]}
        with self._call(f"create Node {name}"):
            try:
                self.client.create(KubeNode.from_dict(obj))  # type: ignore[attr-defined]
            except ApiError as exc:
                if exc.status.code != 409:
                    raise

    def delete_node(self, name: str) -> None:
        with self._call(f"delete Node {name}"):
            try:
                self.client.delete(KubeNode, name)
            except ApiError as exc:
                if exc.status.code != 404:
                    raise

    def nodes(self) -> list[dict[str, Any]]:
        with self._call("list Nodes"):
            return [n.to_dict() for n in self.client.list(KubeNode)]

    # ---- pods -----------------------------------------------------------------------------
    def create_pod(self, pod: Pod) -> None:
        """A Pod bound to its node (``spec.nodeName``: no scheduler involved), with the pod's
        labels and the whoami port; its status comes with :meth:`report_pod`."""
        obj = pod_object(pod)
        with self._call(f"create Pod {pod.name}"):
            try:
                self.client.create(obj)
            except ApiError as exc:
                if exc.status.code != 409:
                    raise

    def report_pod(self, pod: Pod, ip: str, ready: bool = True) -> None:
        """Write the pod's status as the kubelet does once its sandbox has an address
        (``status`` subresource: phase Running, podIP(s), Ready)."""
        with self._call(f"status of Pod {pod.name}"):
            self.client.patch(KubePod.Status, pod.name, {"status": pod_status(ip, ready)},
                              namespace=POD_NAMESPACE, patch_type=PatchType.MERGE)

    def delete_pod(self, name: str) -> None:
        """Delete at once (grace 0: the lab's runtime side already tore the pod down)."""
        with self._call(f"delete Pod {name}"):
            try:
                self.client.delete(KubePod, name, namespace=POD_NAMESPACE, grace_period=0)
            except ApiError as exc:
                if exc.status.code != 404:
                    raise

    def pods(self) -> list[dict[str, Any]]:
        with self._call("list Pods"):
            return [p.to_dict() for p in self.client.list(KubePod, namespace=POD_NAMESPACE)]

    # ---- the service ----------------------------------------------------------------------
    def create_service(self) -> str:
        """The lab's NodePort Service over every pod (selector ``lab=<prefix>``); its
        EndpointSlices come from the controller-manager. Returns the cluster IP."""
        obj = Service.from_dict({  # type: ignore[attr-defined]
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": SERVICE_NAME, "namespace": POD_NAMESPACE},
            "spec": {"type": "NodePort", "selector": {"lab": self.topo.prefix},
                     "ports": [{"name": "http", "protocol": "TCP", "port": SERVICE_PORT,
                                "targetPort": WHOAMI_PORT, "nodePort": SERVICE_NODE_PORT}]}})
        with self._call(f"create Service {SERVICE_NAME}"):
            created = self.client.create(obj)
        return str(created.spec.clusterIP)

    def services(self) -> list[dict[str, Any]]:
        with self._call("list Services"):
            return [s.to_dict() for s in self.client.list(Service, namespace=POD_NAMESPACE)]

    def endpoint_slices(self) -> list[dict[str, Any]]:
        with self._call("list EndpointSlices"):
            return [s.to_dict() for s in self.client.list(EndpointSlice,
                                                          namespace=POD_NAMESPACE)]


def paths_hint(paths: KubePaths) -> str:
    return f"apiserver {paths.server} (log: {os.path.join(paths.workdir, 'kube-apiserver.log')})"


def pod_object(pod: Pod) -> KubePod:
    """The Pod object of a lab pod (one container, the whoami port named ``http``)."""
    return KubePod.from_dict({  # type: ignore[attr-defined, no-any-return]
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod.name, "namespace": POD_NAMESPACE, "labels": dict(pod.labels)},
        "spec": {"nodeName": pod.node,
                 "containers": [{"name": "whoami", "image": "netweft.invalid/lab-whoami:1",
                                 "ports": [{"name": "http", "containerPort": WHOAMI_PORT}]}]}})


def pod_status(ip: str, ready: bool) -> dict[str, Any]:
    """What a kubelet writes for a running pod at ``ip`` (conditions as in Kubernetes'
    ``PodReady`` / ``ContainersReady``)."""
    flag = "True" if ready else "False"
    return {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "PodScheduled", "status": "True"},
                           {"type": "Initialized", "status": "True"},
                           {"type": "ContainersReady", "status": flag},
                           {"type": "Ready", "status": flag}]}


def node_summary(node: dict[str, Any]) -> dict[str, Any]:
    """What ``lab status`` shows of a Node: podCIDR(s), Flannel's annotations (prefix
    stripped), the NetworkUnavailable condition's status."""
    notes = node.get("metadata", {}).get("annotations") or {}
    cond = kn.condition(node, "NetworkUnavailable")  # type: ignore[arg-type]
    return {
        "name": node["metadata"]["name"],
        "podCIDR": (node.get("spec") or {}).get("podCIDR"),
        "annotations": {k[len(kn.PREFIX):]: v for k, v in sorted(notes.items())
                        if k.startswith(kn.PREFIX)},
        "NetworkUnavailable": cond["status"] if cond else None,
    }


def pod_summary(pod: dict[str, Any]) -> dict[str, Any]:
    """A Pod's node, IP and Ready condition as the API has them."""
    status = pod.get("status") or {}
    ready = next((c["status"] for c in status.get("conditions") or []
                  if c.get("type") == "Ready"), None)
    return {"name": pod["metadata"]["name"], "node": (pod.get("spec") or {}).get("nodeName"),
            "podIP": status.get("podIP"), "ready": ready}


def service_summary(service: dict[str, Any], slices: list[dict[str, Any]]) -> dict[str, Any]:
    """A Service with its ready endpoint addresses from its EndpointSlices."""
    name = service["metadata"]["name"]
    ready = sorted(
        addr for s in slices
        if (s.get("metadata", {}).get("labels") or {}).get("kubernetes.io/service-name") == name
        for ep in s.get("endpoints") or []
        if (ep.get("conditions") or {}).get("ready")
        for addr in ep.get("addresses") or [])
    spec = service.get("spec") or {}
    return {"name": name, "type": spec.get("type"), "clusterIP": spec.get("clusterIP"),
            "ports": [{k: p.get(k) for k in ("port", "targetPort", "nodePort")}
                      for p in spec.get("ports") or []],
            "ready_endpoints": ready}
