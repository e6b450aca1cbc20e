"""Real-kernel tests of both dataplanes, in namespaces this test creates: a node namespace with the
proxy's rules, a client namespace outside it, pod namespaces on the node's bridge. The proxy is
driven through its runner (tracker -> plans -> dataplane -> conntrack cleanup)."""

from __future__ import annotations

import collections
import dataclasses

import pytest
from netweft.backends.nft.applier import NftApplier
from netweft.proxy.conntrack import ConntrackCleaner
from netweft.proxy.dataplane import IptablesDataplane, NftablesDataplane
from netweft.proxy.ipt_apply import IptablesApplier
from netweft.proxy.model import (
    Endpoint,
    EndpointPort,
    Protocol,
    Service,
    ServiceKey,
    ServicePort,
    ServiceType,
)
from netweft.proxy.plan import NodeContext
from netweft.proxy.runner import ProxyRunner, RunnerOptions
from support.proxy_testbed import Testbed

pytestmark = pytest.mark.lab
NODE = NodeContext("node-a", ("192.0.2.11",), ("10.244.0.0/16",))


@pytest.fixture(params=["nftables", "iptables"])
def proxy(request: pytest.FixtureRequest, bed: Testbed) -> ProxyRunner:
    if request.param == "nftables":
        dp: NftablesDataplane | IptablesDataplane = NftablesDataplane(
            NODE, NftApplier(netns=bed.node))
    else:
        dp = IptablesDataplane(NODE, IptablesApplier(netns=bed.node))
    runner = ProxyRunner(NODE, dp, ConntrackCleaner(netns=bed.node),
                         RunnerOptions(status_port=None, health_check_ports=False))
    runner.tracker.synced()
    return runner


def service(name: str, ip: str, *, port: int = 80, proto: Protocol = Protocol.TCP,
            type: ServiceType = ServiceType.CLUSTER_IP, node_port: int | None = None,
            **kw: object) -> Service:
    return Service(ServiceKey("t", name), type, (ip,),
                   (ServicePort("p", proto, port, 8080, node_port),), **kw)  # type: ignore[arg-type]


def endpoints(*ips: str, node: str = "node-a",
              proto: Protocol = Protocol.TCP) -> tuple[Endpoint, ...]:
    return tuple(Endpoint(ip, (EndpointPort("p", 8080, proto),), node=node) for ip in ips)


def push(proxy: ProxyRunner, svc: Service, eps: tuple[Endpoint, ...]) -> None:
    proxy.tracker.service_updated(svc)
    proxy.tracker.endpoints_updated(svc.key, eps)
    proxy.sync_once()


def servers(attempts: list) -> collections.Counter[str]:
    return collections.Counter(a.server or a.error for a in attempts)


def test_cluster_ip_spreads_over_all_endpoints(bed: Testbed, proxy: ProxyRunner) -> None:
    ips = ["10.244.1.11", "10.244.1.12", "10.244.1.13"]
    for ip in ips:
        bed.add_pod(ip)
    push(proxy, service("web", "10.96.0.10"), endpoints(*ips))
    counts = servers(bed.connect(bed.client, "10.96.0.10", 80, count=200))
    assert set(counts) == set(ips), counts
    assert min(counts.values()) >= 35, counts          # about 67 each when even
    # from a process on the node, and from a pod, too
    assert servers(bed.connect(bed.node, "10.96.0.10", 80, count=10)).keys() <= set(ips)
    pod = bed.add_pod("10.244.1.20", serve=())
    counts = servers(bed.connect(pod.netns, "10.96.0.10", 80, count=30))
    assert counts.keys() <= set(ips) and sum(counts.values()) == 30


def test_node_port_and_external_ip_from_outside(bed: Testbed, proxy: ProxyRunner) -> None:
    bed.add_pod("10.244.1.11")
    push(proxy, service("np", "10.96.0.30", type=ServiceType.NODE_PORT, node_port=30080,
                        external_ips=("203.0.113.7",)), endpoints("10.244.1.11"))
    for host, port in ((bed.node_ip, 30080), ("203.0.113.7", 80)):
        [a] = bed.connect(bed.client, host, port)
        assert a.server == "10.244.1.11", a
        assert a.peer == bed.bridge_ip                  # externalTrafficPolicy Cluster: SNAT


def test_external_traffic_local(bed: Testbed, proxy: ProxyRunner) -> None:
    bed.add_pod("10.244.1.11")
    bed.add_pod("10.244.1.12")      # plays a pod of another node
    svc = service("loc", "10.96.0.31", type=ServiceType.NODE_PORT, node_port=30081,
                  external_traffic_local=True)
    push(proxy, svc, endpoints("10.244.1.11") + endpoints("10.244.1.12", node="node-b"))
    attempts = bed.connect(bed.client, bed.node_ip, 30081, count=20)
    assert {(a.server, a.peer) for a in attempts} == {("10.244.1.11", bed.client_ip)}
    push(proxy, svc, endpoints("10.244.1.12", node="node-b"))
    [a] = bed.connect(bed.client, bed.node_ip, 30081, timeout=1.0)
    assert a.error == "timeout"                         # dropped: no local endpoint


def test_session_affinity_sticks(bed: Testbed, proxy: ProxyRunner) -> None:
    ips = ["10.244.1.11", "10.244.1.12", "10.244.1.13"]
    for ip in ips:
        bed.add_pod(ip)
    push(proxy, service("sticky", "10.96.0.50", session_affinity=True, affinity_timeout=300),
         endpoints(*ips))
    counts = servers(bed.connect(bed.client, "10.96.0.50", 80, count=30))
    assert len(counts) == 1 and next(iter(counts)) in ips, counts


def test_service_without_endpoints_is_refused(bed: Testbed, proxy: ProxyRunner) -> None:
    push(proxy, service("empty", "10.96.0.20"), ())
    [a] = bed.connect(bed.client, "10.96.0.20", 80, timeout=5.0)
    assert a.error == "refused", a
    [a] = bed.connect(bed.node, "10.96.0.20", 80, timeout=5.0)
    assert a.error == "refused", a
    push(proxy, service("empty-udp", "10.96.0.21", proto=Protocol.UDP), ())
    [a] = bed.connect(bed.client, "10.96.0.21", 80, "udp", timeout=5.0)
    assert a.error == "refused", a                      # ICMP port unreachable


def test_scale_down_then_up(bed: Testbed, proxy: ProxyRunner) -> None:
    ips = ["10.244.1.11", "10.244.1.12", "10.244.1.13"]
    for ip in ips:
        bed.add_pod(ip)
    svc = service("scale", "10.96.0.60")
    push(proxy, svc, endpoints(*ips))
    assert set(servers(bed.connect(bed.client, "10.96.0.60", 80, count=60))) == set(ips)
    push(proxy, svc, endpoints(ips[0]))
    assert set(servers(bed.connect(bed.client, "10.96.0.60", 80, count=20))) == {ips[0]}
    push(proxy, svc, ())
    assert set(servers(bed.connect(bed.client, "10.96.0.60", 80, count=2))) == {"refused"}
    push(proxy, svc, endpoints(*ips))
    assert set(servers(bed.connect(bed.client, "10.96.0.60", 80, count=60))) == set(ips)


def test_udp_survives_endpoint_replacement(bed: Testbed, proxy: ProxyRunner) -> None:
    bed.add_pod("10.244.1.11")
    bed.add_pod("10.244.1.12")
    svc = service("dns", "10.96.0.53", port=53, proto=Protocol.UDP)
    push(proxy, svc, endpoints("10.244.1.11", proto=Protocol.UDP))
    [a] = bed.connect(bed.client, "10.96.0.53", 53, "udp", source_port=40053)
    assert a.server == "10.244.1.11", a
    bed.stop_pod("10.244.1.11")
    push(proxy, svc, endpoints("10.244.1.12", proto=Protocol.UDP))
    # same 5-tuple: without the conntrack cleanup it would stick to the old backend
    [a] = bed.connect(bed.client, "10.96.0.53", 53, "udp", source_port=40053)
    assert a.server == "10.244.1.12", a


def test_hairpin(bed: Testbed, proxy: ProxyRunner) -> None:
    pod = bed.add_pod("10.244.1.11")
    push(proxy, service("self", "10.96.0.70"), endpoints("10.244.1.11"))
    [a] = bed.connect(pod.netns, "10.96.0.70", 80)
    assert a.server == "10.244.1.11" and a.peer == bed.bridge_ip, a


def test_sctp(bed: Testbed, proxy: ProxyRunner) -> None:
    bed.add_pod("10.244.1.11", serve=("sctp:8080",))
    push(proxy, service("sctp", "10.96.0.80", port=9, proto=Protocol.SCTP),
         endpoints("10.244.1.11", proto=Protocol.SCTP))
    [a] = bed.connect(bed.client, "10.96.0.80", 9, "sctp")
    if a.error and a.error.startswith(("OSError:93", "OSError:94")):   # no SCTP in this kernel
        pytest.skip("the kernel has no SCTP sockets")
    assert a.server == "10.244.1.11", a


def test_restart_does_not_flap(bed: Testbed, proxy: ProxyRunner) -> None:
    """A second proxy (a restart) loads the same ruleset in one transaction; the rules the
    kernel lists are the same before and after."""
    bed.add_pod("10.244.1.11")
    svc = service("web", "10.96.0.10")
    push(proxy, svc, endpoints("10.244.1.11"))
    if isinstance(proxy.dataplane, NftablesDataplane):
        before = proxy.dataplane.applier.run("list table ip netweft-proxy")
        again = NftablesDataplane(NODE, NftApplier(netns=bed.node))
        again.sync({svc.key: proxy.plans[svc.key]}, full=True)
        assert again.applier.run("list table ip netweft-proxy") == before
    else:
        again_ipt = IptablesDataplane(NODE, IptablesApplier(netns=bed.node))
        again_ipt.sync({svc.key: proxy.plans[svc.key]}, full=True)
        again_ipt.sync({svc.key: proxy.plans[svc.key]}, full=True)
        from support.proxy_testbed import run_in
        save = run_in(bed.node, ["iptables-save", "-t", "nat"]).stdout
        assert save.count("-j NETWEFT-SERVICES") == 2      # PREROUTING + OUTPUT, once each
    [a] = bed.connect(bed.client, "10.96.0.10", 80)
    assert a.server == "10.244.1.11"


def test_node_port_without_endpoints_is_refused(bed: Testbed, proxy: ProxyRunner) -> None:
    push(proxy, service("np-empty", "10.96.0.90", type=ServiceType.NODE_PORT, node_port=30099),
         ())
    [a] = bed.connect(bed.client, bed.node_ip, 30099, timeout=5.0)
    assert a.error == "refused", a


def test_load_balancer_source_ranges(bed: Testbed, proxy: ProxyRunner) -> None:
    bed.add_pod("10.244.1.11")
    svc = service("lb", "10.96.0.40", type=ServiceType.LOAD_BALANCER, node_port=30090,
                  load_balancer_ips=("203.0.113.40",),
                  load_balancer_source_ranges=("192.0.2.0/28",))
    push(proxy, svc, endpoints("10.244.1.11"))
    [a] = bed.connect(bed.client, "203.0.113.40", 80)
    assert a.server == "10.244.1.11", a                  # 192.0.2.1 is inside the range
    push(proxy, dataclasses.replace(svc, load_balancer_source_ranges=("198.51.100.0/24",)),
         endpoints("10.244.1.11"))
    [a] = bed.connect(bed.client, "203.0.113.40", 80, timeout=1.0)
    assert a.error == "timeout", a                       # outside: dropped
