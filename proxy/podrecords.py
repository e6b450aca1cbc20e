"""Pod records the node daemon writes to etcd for every pod it wires (and removes on DEL).

The daemon builds a :class:`~proxy.records.PodRecord` from what the CNI plugin parsed out of
``CNI_ARGS`` (identity from ``K8S_POD_NAMESPACE``/``K8S_POD_NAME``, labels from
``NETWEFT_POD_LABELS=k=v,k2=v2``, named ports from ``NETWEFT_PORTS=http:8080``) and calls::

    await put_pod(etcd, services_prefix, record)                      # on ADD, after wiring
    await delete_pod(etcd, services_prefix, node, container_id)       # on DEL (idempotent)
"""

from __future__ import annotations

from netweft.kv.protocol import KV
from netweft.proxy.records import PodRecord, pod_key


async def put_pod(etcd: KV, prefix: str, record: PodRecord) -> None:
    await etcd.put(pod_key(prefix, record.node, record.container_id), record.to_json())


async def delete_pod(etcd: KV, prefix: str, node: str, container_id: str) -> bool:
    """Remove a pod's record; False if there was none (a repeated DEL)."""
    return await etcd.delete(pod_key(prefix, node, container_id))


async def sync_pods(etcd: KV, prefix: str, node: str, records: list[PodRecord]) -> int:
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
