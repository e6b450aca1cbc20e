"""Pod records the node daemon writes to etcd for every pod it wires (and removes on DEL).

The daemon calls, from its CNI hooks::

    record = pod_record_from_cni(container_id, cni_args, ips, node)   # on ADD, after wiring
    await put_pod(etcd, services_prefix, record)
    await delete_pod(etcd, services_prefix, node, container_id)       # on DEL (idempotent)

``CNI_ARGS`` (``k=v`` pairs separated by ``;``) carry the pod's identity as runtimes pass it
(``K8S_POD_NAMESPACE``, ``K8S_POD_NAME``); every other pair is a pod label, as the lab passes
them (``app=web``), except the runtime keys below. An optional ``NETWEFT_PORTS=http:8080,dns:53``
carries named container ports, which named target ports resolve against.
"""

from __future__ import annotations

from ipam.etcd import EtcdClient
from proxy.records import PodRecord, RecordError, pod_key

RUNTIME_KEYS = frozenset({
    "IgnoreUnknown", "K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID", "NETWEFT_PORTS",
})


def parse_cni_args(text: str) -> dict[str, str]:
    """``CNI_ARGS`` as a dict (later keys win; pairs without ``=`` are ignored)."""
    out: dict[str, str] = {}
    for part in (text or "").split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out


def parse_named_ports(text: str) -> dict[str, int]:
    """``http:8080,dns:53`` -> {"http": 8080, "dns": 53}."""
    ports: dict[str, int] = {}
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        name, sep, number = item.partition(":")
        if not sep or not name or not number.isdigit() or not 1 <= int(number) <= 65535:
            raise RecordError(f"NETWEFT_PORTS: {item!r} is not name:port")
        ports[name] = int(number)
    return ports


def pod_record_from_cni(
    container_id: str, cni_args: str, ips: list[str] | tuple[str, ...], node: str,
    ready: bool = True,
) -> PodRecord:
    """The record of a pod the daemon just wired (``ips`` without prefix length)."""
    args = parse_cni_args(cni_args)
    labels = {k: v for k, v in args.items() if k not in RUNTIME_KEYS}
    return PodRecord(
        container_id=container_id,
        namespace=args.get("K8S_POD_NAMESPACE") or "default",
        name=args.get("K8S_POD_NAME") or container_id[:12],
        node=node,
        ips=tuple(ip.split("/", 1)[0] for ip in ips),
        labels=labels,
        ready=ready,
        ports=parse_named_ports(args.get("NETWEFT_PORTS", "")),
    )


async def put_pod(etcd: EtcdClient, prefix: str, record: PodRecord) -> None:
    await etcd.put(pod_key(prefix, record.node, record.container_id), record.to_json())


async def delete_pod(etcd: EtcdClient, prefix: str, node: str, container_id: str) -> bool:
    """Remove a pod's record; False if there was none (a repeated DEL)."""
    return await etcd.delete(pod_key(prefix, node, container_id))


async def sync_pods(etcd: EtcdClient, prefix: str, node: str, records: list[PodRecord]) -> int:
    """Make this node's pod records exactly ``records`` (on daemon start, after GC): puts the
    missing or changed ones, deletes the rest. Returns the number of keys written or removed."""
    node_dir = pod_key(prefix, node, "")
    kvs, _ = await etcd.get_prefix(node_dir)
    actual = {kv.key: kv.value for kv in kvs}
    desired = {pod_key(prefix, node, r.container_id): r.to_json().encode() for r in records}
    changes = 0
    for key, value in desired.items():
        if actual.get(key) != value:
            await etcd.put(key, value)
            changes += 1
    for key in actual.keys() - desired.keys():
        await etcd.delete(key)
        changes += 1
    return changes
