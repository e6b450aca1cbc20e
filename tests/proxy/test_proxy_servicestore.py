"""Service records with allocated cluster IPs and node ports, against a real etcd."""

from __future__ import annotations

import asyncio
import ipaddress
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from netweft.kv.etcd import EtcdClient, EtcdSettings
from netweft.proxy.model import Protocol, ServiceKey, ServiceType
from netweft.proxy.records import (
    PortRecord,
    RecordError,
    ServiceRecord,
    cluster_ip_key,
    node_port_key,
)
from netweft.proxy.servicestore import (
    AllocationError,
    ServiceExists,
    ServiceNotFound,
    assign_node_ports,
    check_node_ports,
    create_service,
    delete_service,
    list_services,
    parse_port_spec,
    pick_cluster_ip,
)

T = TypeVar("T")
CIDR = ipaddress.IPv4Network("10.96.0.0/12")


def run(endpoint: str, body: Callable[[EtcdClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with EtcdClient(EtcdSettings.from_strings(endpoint), timeout=30) as etcd:
            return await body(etcd)

    return asyncio.run(main())


def request(name: str, stype: ServiceType = ServiceType.CLUSTER_IP, cluster_ip: str = "",
            node_port: int | None = None, namespace: str = "default") -> ServiceRecord:
    return ServiceRecord(namespace, name, stype, cluster_ip,
                         (PortRecord("", Protocol.TCP, 80, 8080, node_port),), {"app": name})


def test_port_specs() -> None:
    assert parse_port_spec("80") == PortRecord("", Protocol.TCP, 80, 80)
    assert parse_port_spec("80:8080/tcp") == PortRecord("", Protocol.TCP, 80, 8080)
    assert parse_port_spec("dns=53/udp") == PortRecord("dns", Protocol.UDP, 53, 53)
    assert parse_port_spec("443:https") == PortRecord("", Protocol.TCP, 443, "https")
    for bad, message in [("x", "the service port"), ("80:0", "the target port"),
                         ("80/icmp", "protocol")]:
        with pytest.raises(RecordError, match=message):
            parse_port_spec(bad)


def test_pick_cluster_ip_never_network_or_broadcast() -> None:
    net = ipaddress.IPv4Network("10.96.0.0/29")
    rng = random.Random(1)
    used: set[str] = set()
    for _ in range(6):
        used.add(pick_cluster_ip(net, used, rng))
    assert used == {f"10.96.0.{i}" for i in range(1, 7)}
    with pytest.raises(AllocationError, match="full"):
        pick_cluster_ip(net, used, rng)


def test_concurrent_creates_get_distinct_addresses_and_node_ports(etcd_endpoint: str,
                                                                  etcd_prefix: str) -> None:
    async def body(etcd: EtcdClient) -> list[ServiceRecord]:
        small = ipaddress.IPv4Network("10.96.0.0/27")  # 30 usable: collisions are likely
        made = await asyncio.gather(*(
            create_service(etcd, etcd_prefix, request(f"s{i}", ServiceType.NODE_PORT), small,
                           random.Random(i % 3))  # three creators pick the same sequence
            for i in range(24)))
        return list(made)

    made = run(etcd_endpoint, body)
    assert len({r.cluster_ip for r in made}) == 24
    assert len({r.ports[0].node_port for r in made}) == 24
    assert all(30000 <= (r.ports[0].node_port or 0) <= 32767 for r in made)
    listed = run(etcd_endpoint, lambda etcd: list_services(etcd, etcd_prefix))
    assert sorted(listed, key=lambda r: r.name) == sorted(made, key=lambda r: r.name)


def test_fixed_addresses_conflicts_and_delete_releases(etcd_endpoint: str,
                                                       etcd_prefix: str) -> None:
    async def body(etcd: EtcdClient) -> None:
        a = await create_service(etcd, etcd_prefix, request("a", ServiceType.NODE_PORT,
                                                            "10.96.0.10", 30080), CIDR)
        assert (a.cluster_ip, a.ports[0].node_port) == ("10.96.0.10", 30080)
        with pytest.raises(ServiceExists, match="default/a already exists"):
            await create_service(etcd, etcd_prefix, request("a"), CIDR)
        with pytest.raises(AllocationError, match="--cluster-ip: 10.96.0.10 is already in use"):
            await create_service(etcd, etcd_prefix, request("b", cluster_ip="10.96.0.10"), CIDR)
        with pytest.raises(AllocationError, match="--node-port: 30080 is already in use"):
            await create_service(etcd, etcd_prefix, request("b", ServiceType.NODE_PORT,
                                                            node_port=30080), CIDR)
        with pytest.raises(AllocationError, match="not a usable address"):
            await create_service(etcd, etcd_prefix, request("b", cluster_ip="10.200.0.1"), CIDR)
        with pytest.raises(AllocationError, match="only for --type NodePort"):
            await create_service(etcd, etcd_prefix, request("b", node_port=30081), CIDR)
        with pytest.raises(AllocationError, match="outside 30000-32767"):
            await create_service(etcd, etcd_prefix, request("b", ServiceType.NODE_PORT,
                                                            node_port=8080), CIDR)
        # Nothing of the failed attempts was left behind.
        ips, _ = await etcd.get_prefix(cluster_ip_key(etcd_prefix, ""))
        assert [kv.key for kv in ips] == [cluster_ip_key(etcd_prefix, "10.96.0.10")]

        deleted = await delete_service(etcd, etcd_prefix, ServiceKey("default", "a"))
        assert deleted == a
        assert await etcd.get(cluster_ip_key(etcd_prefix, "10.96.0.10")) is None
        assert await etcd.get(node_port_key(etcd_prefix, 30080)) is None
        with pytest.raises(ServiceNotFound):
            await delete_service(etcd, etcd_prefix, ServiceKey("default", "a"))
        again = await create_service(etcd, etcd_prefix, request("b", ServiceType.NODE_PORT,
                                                                "10.96.0.10", 30080), CIDR)
        assert again.cluster_ip == "10.96.0.10"

    run(etcd_endpoint, body)


def _dns(udp_node_port: int | None = None, tcp_node_port: int | None = None,
         tcp_port: int = 53) -> tuple[PortRecord, ...]:
    return (PortRecord("dns", Protocol.UDP, 53, 5353, udp_node_port),
            PortRecord("dns-tcp", Protocol.TCP, tcp_port, 5353, tcp_node_port))


def test_tcp_and_udp_of_one_port_number_share_one_node_port() -> None:
    """Kubernetes' initNodePorts: ports with the same number get one node port, the requested
    one if any of them names it, else one picked once."""
    rng = random.Random(7)
    picked = assign_node_ports(_dns(), set(), rng)
    assert picked[0].node_port == picked[1].node_port is not None
    assert [p.node_port for p in assign_node_ports(_dns(None, 30053), set(), rng)] == [
        30053, 30053]
    # other numbers get their own; an explicit different one for the same number is kept
    three = assign_node_ports((*_dns(), PortRecord("http", Protocol.TCP, 80, 8080)), set(), rng)
    assert three[0].node_port == three[1].node_port != three[2].node_port
    assert [p.node_port for p in assign_node_ports(_dns(30053, 30054), set(), rng)] == [
        30053, 30054]


def test_node_port_rules_follow_kubernetes_validation() -> None:
    check_node_ports(_dns(30053, 30053))                     # one number, two protocols
    with pytest.raises(AllocationError, match="30053 is given twice for TCP"):
        check_node_ports((PortRecord("a", Protocol.TCP, 53, 53, 30053),
                          PortRecord("b", Protocol.TCP, 53, 54, 30053)))
    with pytest.raises(AllocationError, match="30053 is given to ports 53 and 80"):
        check_node_ports(_dns(30053, 30053, tcp_port=80))


def test_shared_node_port_is_one_allocation_released_once(etcd_endpoint: str,
                                                          etcd_prefix: str) -> None:
    def dns(name: str, *ports: PortRecord) -> ServiceRecord:
        return ServiceRecord("kube-system", name, ServiceType.NODE_PORT, "", ports, {"k": "v"})

    async def body(etcd: EtcdClient) -> None:
        given = await create_service(etcd, etcd_prefix, dns("a", *_dns(30053, 30053)), CIDR)
        assert [p.node_port for p in given.ports] == [30053, 30053]
        picked = await create_service(etcd, etcd_prefix, dns("b", *_dns()), CIDR)
        assert picked.ports[0].node_port == picked.ports[1].node_port != 30053
        with pytest.raises(AllocationError, match="--node-port: 30053 is already in use"):
            await create_service(etcd, etcd_prefix, dns("c", *_dns(None, 30053)), CIDR)
        ports, _ = await etcd.get_prefix(node_port_key(etcd_prefix, 0)[:-1])
        assert len(ports) == 2
        await delete_service(etcd, etcd_prefix, ServiceKey("kube-system", "a"))
        await delete_service(etcd, etcd_prefix, ServiceKey("kube-system", "b"))
        ports, _ = await etcd.get_prefix(node_port_key(etcd_prefix, 0)[:-1])
        assert ports == []

    run(etcd_endpoint, body)
