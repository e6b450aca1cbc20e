"""Creating and deleting service records in etcd, with their cluster IP and node ports.

A service, its cluster IP and its node ports are written in one transaction that succeeds only if
none of those keys exists, so two concurrent ``service create`` can never share an address or a
node port. Addresses are picked at random among free ones (like Flannel's subnets and Kubernetes'
allocators, so concurrent creators rarely collide); a lost race is retried with new picks.
Deleting a service removes its allocation keys in the same transaction.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from dataclasses import replace

from netweft.kv.protocol import KV
from netweft.proxy.model import Protocol, ServiceKey, ServiceType
from netweft.proxy.records import (
    NODE_PORT_MAX,
    NODE_PORT_MIN,
    PodRecord,
    PortRecord,
    RecordError,
    ServiceRecord,
    cluster_ip_key,
    node_port_key,
    pods_dir,
    service_key,
    services_dir,
)

ATTEMPTS = 40


class ServiceExists(RecordError):
    pass


class ServiceNotFound(RecordError):
    pass


class AllocationError(RecordError):
    pass


def _owner(key: ServiceKey) -> str:
    return f"{key.namespace}/{key.name}"


def check_cluster_ip(ip: str, cidr: ipaddress.IPv4Network) -> str:
    try:
        addr = ipaddress.IPv4Address(ip)
    except ValueError:
        raise AllocationError(f"--cluster-ip: {ip!r} is not an IPv4 address") from None
    if addr not in cidr or addr in (cidr.network_address, cidr.broadcast_address):
        raise AllocationError(f"--cluster-ip: {ip} is not a usable address of the service "
                              f"range {cidr}")
    return str(addr)


def pick_cluster_ip(cidr: ipaddress.IPv4Network, used: set[str], rng: random.Random) -> str:
    """A random free host address of ``cidr`` (never the network or broadcast address)."""
    first, last = int(cidr.network_address) + 1, int(cidr.broadcast_address) - 1
    if last < first:
        raise AllocationError(f"--service-cidr: {cidr} has no usable addresses")
    size = last - first + 1
    for _ in range(64):
        ip = str(ipaddress.IPv4Address(rng.randint(first, last)))
        if ip not in used:
            return ip
    start = rng.randrange(size)  # nearly full: walk the range once from a random point
    for i in range(size):
        ip = str(ipaddress.IPv4Address(first + (start + i) % size))
        if ip not in used:
            return ip
    raise AllocationError(f"the service range {cidr} is full")


def check_node_ports(ports: list[PortRecord] | tuple[PortRecord, ...]) -> None:
    """Requested node ports, by Kubernetes' rules (``ValidateService``: no node port twice for
    one protocol; the apiserver's ``initNodePorts`` allocates a node port once, so one node port
    serves one service port number): ``dns=53/udp`` and ``dns-tcp=53/tcp`` may share 30053,
    ports 53 and 80 may not. Raises AllocationError naming ``--node-port``."""
    number: dict[int, int] = {}
    seen: set[tuple[int, Protocol]] = set()
    for p in ports:
        if p.node_port is None:
            continue
        if (p.node_port, p.protocol) in seen:
            raise AllocationError(f"--node-port: {p.node_port} is given twice for "
                                  f"{p.protocol.value}")
        seen.add((p.node_port, p.protocol))
        if number.setdefault(p.node_port, p.port) != p.port:
            raise AllocationError(f"--node-port: {p.node_port} is given to ports "
                                  f"{number[p.node_port]} and {p.port} (a node port serves one "
                                  "port number, on any protocols)")


def assign_node_ports(ports: tuple[PortRecord, ...], used: set[int],
                      rng: random.Random) -> tuple[PortRecord, ...]:
    """Every port gets a node port, as the Kubernetes apiserver's ``initNodePorts`` assigns
    them: ports with the same service port number (53/UDP and 53/TCP) share one, the one
    requested for any of them, else one picked once among ports not in ``used``. Pure; raises
    AllocationError when the range is full."""
    by_number: dict[int, int] = {}
    for p in ports:
        if p.node_port is not None:
            by_number.setdefault(p.port, p.node_port)
    taken = used | {p.node_port for p in ports if p.node_port is not None}
    out = []
    for p in ports:
        node_port = p.node_port
        if node_port is None:
            node_port = by_number.get(p.port)
            if node_port is None:
                node_port = pick_node_port(taken, rng)
                taken.add(node_port)
                by_number[p.port] = node_port
        out.append(replace(p, node_port=node_port))
    return tuple(out)


def pick_node_port(used: set[int], rng: random.Random) -> int:
    free = [p for p in range(NODE_PORT_MIN, NODE_PORT_MAX + 1) if p not in used]
    if not free:
        raise AllocationError(f"no free node port in {NODE_PORT_MIN}-{NODE_PORT_MAX}")
    return rng.choice(free)


async def _allocated(etcd: KV, prefix: str) -> tuple[set[str], set[int]]:
    ips_dir = cluster_ip_key(prefix, "")
    ports_dir = node_port_key(prefix, 0)[:-1]
    ip_kvs, _ = await etcd.get_prefix(ips_dir)
    port_kvs, _ = await etcd.get_prefix(ports_dir)
    ports = {int(kv.key[len(ports_dir):]) for kv in port_kvs if kv.key[len(ports_dir):].isdigit()}
    return {kv.key[len(ips_dir):] for kv in ip_kvs}, ports


async def create_service(
    etcd: KV, prefix: str, request: ServiceRecord, cidr: ipaddress.IPv4Network,
    rng: random.Random | None = None,
) -> ServiceRecord:
    """Store ``request``; an empty ``cluster_ip`` and absent node ports (NodePort/LoadBalancer)
    are allocated. Returns the stored record."""
    rng = rng or random.Random()
    check_ports(request.ports)
    key = service_key(prefix, request.key)
    wants_node_ports = request.type in (ServiceType.NODE_PORT, ServiceType.LOAD_BALANCER)
    if request.cluster_ip:
        check_cluster_ip(request.cluster_ip, cidr)
    for p in request.ports:
        if p.node_port is not None:
            if not wants_node_ports:
                raise AllocationError("--node-port: only for --type NodePort or LoadBalancer")
            if not NODE_PORT_MIN <= p.node_port <= NODE_PORT_MAX:
                raise AllocationError(f"--node-port: {p.node_port} is outside "
                                      f"{NODE_PORT_MIN}-{NODE_PORT_MAX}")
    check_node_ports(request.ports)
    asked = sorted({p.node_port for p in request.ports if p.node_port is not None})
    for attempt in range(ATTEMPTS):
        if await etcd.get(key) is not None:
            raise ServiceExists(f"service {request.key} already exists")
        used_ips, used_ports = await _allocated(etcd, prefix)
        if request.cluster_ip and request.cluster_ip in used_ips:
            raise AllocationError(f"--cluster-ip: {request.cluster_ip} is already in use")
        for port in asked:
            if port in used_ports:
                raise AllocationError(f"--node-port: {port} is already in use")
        cluster_ip = request.cluster_ip or pick_cluster_ip(cidr, used_ips, rng)
        ports = (assign_node_ports(request.ports, used_ports, rng) if wants_node_ports
                 else request.ports)
        record = replace(request, cluster_ip=cluster_ip, ports=ports)
        owner = _owner(record.key)
        items: dict[str, bytes | str] = {key: record.to_json(),
                                         cluster_ip_key(prefix, cluster_ip): owner}
        for p in record.ports:       # one key per node port, however many protocols share it
            if p.node_port is not None:
                items[node_port_key(prefix, p.node_port)] = owner
        if await etcd.create_all(items):
            return record
        await asyncio.sleep(random.uniform(0, 0.005 * (attempt + 1)))  # lost a race: spread out
    raise AllocationError(f"could not allocate addresses for {request.key} after {ATTEMPTS} "
                          "attempts (concurrent creates?); try again")


async def get_service(etcd: KV, prefix: str, key: ServiceKey) -> ServiceRecord | None:
    kv = await etcd.get(service_key(prefix, key))
    return ServiceRecord.from_json(kv.value) if kv is not None else None


async def delete_service(etcd: KV, prefix: str, key: ServiceKey) -> ServiceRecord:
    """Delete a service and release its cluster IP and node ports (one transaction)."""
    etcd_key = service_key(prefix, key)
    for _ in range(ATTEMPTS):
        kv = await etcd.get(etcd_key)
        if kv is None:
            raise ServiceNotFound(f"service {key} does not exist")
        try:
            record = ServiceRecord.from_json(kv.value)
            keys = [cluster_ip_key(prefix, record.cluster_ip)]
            keys += [node_port_key(prefix, n) for n in sorted(
                {p.node_port for p in record.ports if p.node_port is not None})]
        except RecordError:
            record, keys = None, []  # a damaged record: remove it anyway
        if await etcd.delete_all([etcd_key, *keys], etcd_key, kv.mod_revision):
            if record is None:
                raise ServiceNotFound(f"service {key} had a damaged record; removed it")
            return record
    raise RecordError(f"service {key} kept changing while deleting it; try again")


async def list_services(etcd: KV, prefix: str) -> list[ServiceRecord]:
    kvs, _ = await etcd.get_prefix(services_dir(prefix))
    out = []
    for kv in kvs:
        try:
            out.append(ServiceRecord.from_json(kv.value))
        except RecordError:
            continue
    return sorted(out, key=lambda r: (r.namespace, r.name))


async def list_pods(etcd: KV, prefix: str) -> list[PodRecord]:
    kvs, _ = await etcd.get_prefix(pods_dir(prefix))
    out = []
    for kv in kvs:
        try:
            out.append(PodRecord.from_json(kv.value))
        except RecordError:
            continue
    return out


def check_ports(ports: list[PortRecord] | tuple[PortRecord, ...]) -> None:
    """Kubernetes' rules: at least one port; with several, every port named, names unique; no
    port number twice for one protocol."""
    if not ports:
        raise RecordError("--port: at least one port is needed")
    names = [p.name for p in ports]
    if len(ports) > 1 and not all(names):
        raise RecordError("--port: name every port (name=PORT...) when there are several")
    if len(set(names)) != len(names):
        raise RecordError("--port: port names must be unique")
    pairs = [(p.port, p.protocol) for p in ports]
    if len(set(pairs)) != len(pairs):
        raise RecordError("--port: the same port and protocol twice")


def parse_port_spec(text: str, index: int = 0) -> PortRecord:
    """``[name=]PORT[:TARGET][/PROTO]``: ``80``, ``80:8080``, ``http=80:8080/tcp``,
    ``53/udp``, ``443:https`` (a named target port)."""
    where = f"--port {text!r}"
    name, sep, rest = text.partition("=")
    if not sep:
        name, rest = "", text
    rest, _, proto = rest.partition("/")
    port_text, _, target_text = rest.partition(":")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise RecordError(f"{where}: the service port must be 1-65535")
    port = int(port_text)
    target: int | str = port
    if target_text:
        if target_text.isdigit():
            target = int(target_text)
            if not 1 <= target <= 65535:
                raise RecordError(f"{where}: the target port must be 1-65535")
        else:
            target = target_text
    return PortRecord.from_dict({"name": name, "port": port, "targetPort": target,
                                 "protocol": (proto or "TCP").upper()}, f"ports[{index}]")
