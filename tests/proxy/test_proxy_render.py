"""Pure tests of both renderers: golden rulesets, and a packet trace over the rendered text for
every feature (ClusterIP, NodePort, externalIPs, LoadBalancer + source ranges, ready/terminating
fallback, affinity, traffic policies, reject/drop, hairpin, masquerade, TCP/UDP/SCTP)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from netweft.proxy.iptables import IptState
from netweft.proxy.model import (
    Endpoint,
    EndpointPort,
    Protocol,
    Service,
    ServiceKey,
    ServicePort,
    ServiceType,
)
from netweft.proxy.nftables import NftState
from netweft.proxy.plan import EndpointTarget, NodeContext, plan_service
from support.fake_nft import FakeNft, FakeTable  # noqa: E402
from support.proxy_trace import IptablesTracer, NftTracer, Packet, Trace  # noqa: E402

GOLDEN = Path(__file__).parent / "golden" / "proxy"
NODE = NodeContext("node-a", ("192.0.2.11",), ("10.244.0.0/16",))
POD = "10.244.1.50"          # an in-cluster client
OUTSIDE = "198.18.0.9"       # an off-cluster client


def eps(*addrs: str, node: str = "node-a", port: int = 8080, name: str = "http",
        proto: Protocol = Protocol.TCP, **flags: bool) -> tuple[Endpoint, ...]:
    return tuple(Endpoint(a, (EndpointPort(name, port, proto),), node=node, **flags)
                 for a in addrs)


def svc(name: str, *, type: ServiceType = ServiceType.CLUSTER_IP, ip: str,
        proto: Protocol = Protocol.TCP, port: int = 80, node_port: int | None = None,
        **kw: object) -> Service:
    return Service(ServiceKey("default", name), type, (ip,),
                   (ServicePort("http", proto, port, 8080, node_port),), **kw)  # type: ignore[arg-type]


def catalog() -> dict[ServiceKey, tuple[Service, tuple[Endpoint, ...]]]:
    entries = [
        (svc("web", ip="10.96.0.10"),
         eps("10.244.1.2", "10.244.1.3") + eps("10.244.2.2", node="node-b")),
        (svc("dns", ip="10.96.0.53", proto=Protocol.UDP, port=53),
         eps("10.244.1.4", proto=Protocol.UDP, port=5353)),
        (svc("sctp", ip="10.96.0.77", proto=Protocol.SCTP, port=9),
         eps("10.244.1.5", proto=Protocol.SCTP, port=9)),
        (svc("empty", ip="10.96.0.20"), ()),
        (svc("np", type=ServiceType.NODE_PORT, ip="10.96.0.30", node_port=30080,
             external_ips=("203.0.113.7",)),
         eps("10.244.1.6") + eps("10.244.2.6", node="node-b")),
        (svc("np-local", type=ServiceType.NODE_PORT, ip="10.96.0.31", node_port=30081,
             external_traffic_local=True, health_check_node_port=32000),
         eps("10.244.1.7") + eps("10.244.2.7", node="node-b")),
        (svc("np-remote-only", type=ServiceType.NODE_PORT, ip="10.96.0.32", node_port=30082,
             external_traffic_local=True),
         eps("10.244.2.8", node="node-b")),
        (svc("lb", type=ServiceType.LOAD_BALANCER, ip="10.96.0.40", node_port=30090,
             load_balancer_ips=("203.0.113.40",), load_balancer_source_ranges=("198.18.0.0/24",)),
         eps("10.244.1.9")),
        (svc("sticky", ip="10.96.0.50", session_affinity=True, affinity_timeout=60),
         eps("10.244.1.10", "10.244.1.11")),
        (svc("itp", ip="10.96.0.60", internal_traffic_local=True),
         eps("10.244.1.12") + eps("10.244.2.12", node="node-b")),
        (svc("itp-none", ip="10.96.0.61", internal_traffic_local=True),
         eps("10.244.2.13", node="node-b")),
        (svc("terminating", ip="10.96.0.70"),
         eps("10.244.1.14", ready=False, serving=True, terminating=True)
         + eps("10.244.1.15", ready=False, serving=False, terminating=True)),
        (svc("mixed", ip="10.96.0.71"),
         eps("10.244.1.16") + eps("10.244.1.17", ready=False, serving=True, terminating=True)),
    ]
    return {s.key: (s, e) for s, e in entries}


def render(mode: str, services: dict | None = None) -> str:
    services = catalog() if services is None else services
    plans = {k: plan_service(s, e, NODE) for k, (s, e) in services.items()}
    if mode == "nftables":
        state: NftState | IptState = NftState(NODE)
        state.update(plans)
        return state.full_text()
    ipt = IptState(NODE)
    ipt.update(plans)
    return ipt.full_text()


def ruleset(mode: str, services: dict | None = None) -> FakeTable | str:
    """What the tracers walk: nftables, the table the full transaction leaves in the in-memory
    fake; iptables, the restore text."""
    if mode != "nftables":
        return render(mode, services)
    services = catalog() if services is None else services
    state = NftState(NODE)
    state.update({k: plan_service(s, e, NODE) for k, (s, e) in services.items()})
    fake = FakeNft()
    fake.apply(state.full_transaction())
    return fake.table("ip netweft-proxy")


def tracer(mode: str, rules: FakeTable | str,
           sticky: dict[str, EndpointTarget] | None = None) -> NftTracer | IptablesTracer:
    if isinstance(rules, str):
        return IptablesTracer(rules, sticky)
    return NftTracer(rules, sticky)


MODES = ["nftables", "iptables"]


@pytest.mark.parametrize("mode", MODES)
def test_golden_ruleset(mode: str) -> None:
    text = render(mode)
    path = GOLDEN / f"catalog.{'nft' if mode == 'nftables' else 'iptables'}"
    if os.environ.get("NETWEFT_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{path} differs (NETWEFT_UPDATE_GOLDEN=1 to refresh)"


def test_filter_hooks_look_at_new_connections_only() -> None:
    """Every rule of the filter base chains (hooks every packet of the node passes, pod
    traffic too) tests ``ct state new`` first, as kube-proxy's ``ct state new jump ...``: a
    packet of an accepted connection costs a conntrack-state test, no set lookup (issue 12:
    filter-prerouting looked up @firewall-ips for every packet)."""
    from netweft.proxy.nftables import static_chains
    filters = [c for c in static_chains(NODE) if c.hook is not None and c.hook.type == "filter"]
    assert {c.hook.hook for c in filters if c.hook} == {"prerouting", "input", "forward",
                                                         "output"}
    for chain in filters:
        for rule in chain.rules:
            assert rule.startswith("ct state new "), (chain.name, rule)


def test_masquerade_decides_on_the_mark_before_any_lookup() -> None:
    """nat-postrouting tests the masquerade mark first and masquerades a marked connection at
    once, as kube-proxy's ``masquerading`` chain: the @hairpin lookup is only for unmarked
    DNATed connections (issue 12: it came first, so every marked one paid it too)."""
    from netweft.proxy.nftables import NAT_POSTROUTING, static_chains
    (chain,) = [c for c in static_chains(NODE) if c.name == NAT_POSTROUTING]
    assert chain.rules[0].startswith("meta mark & 0x4000 != 0 ")
    assert chain.rules[0].endswith(" masquerade fully-random")
    assert [i for i, r in enumerate(chain.rules) if "@hairpin" in r] == [1]


def B(addr: str, port: int = 8080) -> EndpointTarget:
    return EndpointTarget(addr, port)


@pytest.fixture(params=MODES)
def trace(request: pytest.FixtureRequest):
    t = tracer(request.param, ruleset(request.param))

    def run(src: str, dst: str, port: int, proto: str = "tcp", local: bool = False) -> Trace:
        return t.trace(Packet(src, dst, proto, port, local))
    return run


def test_cluster_ip_balances_over_all_ready_endpoints(trace) -> None:
    t = trace(POD, "10.96.0.10", 80)
    assert t.endpoints == {B("10.244.1.2"), B("10.244.1.3"), B("10.244.2.2")}
    assert t.verdicts == {"dnat"}
    assert not any(t.masquerade.values())          # in-cluster client keeps its address


def test_cluster_ip_from_off_cluster_and_from_node_is_masqueraded(trace) -> None:
    assert all(trace(OUTSIDE, "10.96.0.10", 80).masquerade.values())
    assert all(trace("192.0.2.11", "10.96.0.10", 80, local=True).masquerade.values())
    assert trace("192.0.2.11", "10.96.0.10", 80, local=True).endpoints == {
        B("10.244.1.2"), B("10.244.1.3"), B("10.244.2.2")}


def test_wrong_port_or_protocol_is_not_touched(trace) -> None:
    assert trace(POD, "10.96.0.10", 81).verdicts == {"pass"}
    assert trace(POD, "10.96.0.10", 80, "udp").verdicts == {"pass"}


def test_udp_and_sctp(trace) -> None:
    assert trace(POD, "10.96.0.53", 53, "udp").endpoints == {B("10.244.1.4", 5353)}
    assert trace(POD, "10.96.0.53", 53, "tcp").verdicts == {"pass"}
    assert trace(POD, "10.96.0.77", 9, "sctp").endpoints == {B("10.244.1.5", 9)}


def test_service_without_endpoints_is_rejected(trace) -> None:
    assert trace(POD, "10.96.0.20", 80).verdicts == {"reject"}
    assert trace("192.0.2.11", "10.96.0.20", 80, local=True).verdicts == {"reject"}


def test_node_port_on_node_ips_only(trace) -> None:
    t = trace(OUTSIDE, "192.0.2.11", 30080)
    assert t.endpoints == {B("10.244.1.6"), B("10.244.2.6")}
    assert all(t.masquerade.values())               # externalTrafficPolicy Cluster
    assert trace(OUTSIDE, "127.0.0.1", 30080, local=True).verdicts == {"pass"}
    assert trace(OUTSIDE, "192.0.2.99", 30080).verdicts == {"pass"}


def test_external_ip(trace) -> None:
    t = trace(OUTSIDE, "203.0.113.7", 80)
    assert t.endpoints == {B("10.244.1.6"), B("10.244.2.6")}
    assert all(t.masquerade.values())


def test_external_traffic_local_keeps_client_and_uses_local_endpoints(trace) -> None:
    t = trace(OUTSIDE, "192.0.2.11", 30081)
    assert t.endpoints == {B("10.244.1.7")}
    assert not any(t.masquerade.values())
    # cluster traffic to the same service still uses every endpoint
    assert trace(POD, "10.96.0.31", 80).endpoints == {B("10.244.1.7"), B("10.244.2.7")}


def test_external_traffic_local_without_local_endpoints_drops(trace) -> None:
    assert trace(OUTSIDE, "192.0.2.11", 30082).verdicts == {"drop"}
    assert trace(POD, "10.96.0.32", 80).endpoints == {B("10.244.2.8")}


def test_external_traffic_local_short_circuits_pods_and_the_node(trace) -> None:
    """kube-proxy's EXT chain: a pod, or the node itself, reaching an externalTrafficPolicy
    Local frontend goes to every endpoint (the node masqueraded, the pod not), even when none
    is local; only other clients are held to local endpoints (tests/proxy/test_proxy_vs_kubeproxy.py
    found the difference on the real kube-proxy)."""
    t = trace(POD, "192.0.2.11", 30082)
    assert (t.endpoints, t.verdicts) == ({B("10.244.2.8")}, {"dnat"})
    assert not any(t.masquerade.values())
    t = trace("192.0.2.11", "192.0.2.11", 30082, local=True)
    assert (t.endpoints, t.verdicts) == ({B("10.244.2.8")}, {"dnat"})
    assert all(t.masquerade.values())
    t = trace(POD, "192.0.2.11", 30081)
    assert t.endpoints == {B("10.244.1.7"), B("10.244.2.7")} and t.verdicts == {"dnat"}


@pytest.mark.parametrize("mode", MODES)
def test_external_traffic_local_short_circuit_with_affinity(mode: str) -> None:
    services = {s.key: (s, e) for s, e in [
        (svc("np-local-sticky", type=ServiceType.NODE_PORT, ip="10.96.0.33", node_port=30083,
             external_traffic_local=True, session_affinity=True, affinity_timeout=30,
             external_ips=("203.0.113.8",)),
         eps("10.244.1.18") + eps("10.244.2.18", node="node-b")),
        (svc("sticky-remote-only", type=ServiceType.NODE_PORT, ip="10.96.0.34",
             node_port=30084, external_traffic_local=True, session_affinity=True,
             affinity_timeout=30),
         eps("10.244.2.19", node="node-b"))]}
    walker = tracer(mode, ruleset(mode, services))

    def trace(src: str, dst: str, port: int, local: bool = False) -> Trace:
        return walker.trace(Packet(src, dst, "tcp", port, local))

    both = {B("10.244.1.18"), B("10.244.2.18")}
    assert trace(POD, "192.0.2.11", 30083).endpoints == both
    assert trace(POD, "203.0.113.8", 80).endpoints == both
    assert trace(OUTSIDE, "192.0.2.11", 30083).endpoints == {B("10.244.1.18")}
    assert trace(OUTSIDE, "203.0.113.8", 80).endpoints == {B("10.244.1.18")}
    t = trace("192.0.2.11", "192.0.2.11", 30084, local=True)
    assert t.endpoints == {B("10.244.2.19")} and all(t.masquerade.values())
    assert trace(POD, "192.0.2.11", 30084).endpoints == {B("10.244.2.19")}
    assert trace(OUTSIDE, "192.0.2.11", 30084).verdicts == {"drop"}


def test_load_balancer_ip_with_source_ranges(trace) -> None:
    assert trace("198.18.0.9", "203.0.113.40", 80).endpoints == {B("10.244.1.9")}
    assert trace("198.19.0.9", "203.0.113.40", 80).verdicts == {"drop"}
    assert trace("198.19.0.9", "192.0.2.11", 30090).endpoints == {B("10.244.1.9")}


def test_session_affinity_first_connection_balances(trace) -> None:
    assert trace(POD, "10.96.0.50", 80).endpoints == {B("10.244.1.10"), B("10.244.1.11")}


@pytest.mark.parametrize("mode", MODES)
def test_session_affinity_returning_client_sticks(mode: str) -> None:
    rules = ruleset(mode)
    for backend in (B("10.244.1.10"), B("10.244.1.11")):
        t = tracer(mode, rules, {POD: backend}).trace(Packet(POD, "10.96.0.50", "tcp", 80))
        assert t.endpoints == {backend}
    # another client, or a service without affinity, is not affected
    t = tracer(mode, rules, {POD: B("10.244.1.10")}).trace(
        Packet(OUTSIDE, "10.96.0.50", "tcp", 80))
    assert t.endpoints == {B("10.244.1.10"), B("10.244.1.11")}
    t = tracer(mode, rules, {POD: B("10.244.1.2")}).trace(Packet(POD, "10.96.0.10", "tcp", 80))
    assert len(t.endpoints) == 3


def test_internal_traffic_local(trace) -> None:
    assert trace(POD, "10.96.0.60", 80).endpoints == {B("10.244.1.12")}
    assert trace(POD, "10.96.0.61", 80).verdicts == {"drop"}


def test_terminating_fallback_and_ready_preference(trace) -> None:
    assert trace(POD, "10.96.0.70", 80).endpoints == {B("10.244.1.14")}
    assert trace(POD, "10.96.0.71", 80).endpoints == {B("10.244.1.16")}


def test_hairpin_is_masqueraded(trace) -> None:
    t = trace("10.244.1.2", "10.96.0.10", 80)
    assert t.masquerade[B("10.244.1.2")] is True
    assert t.masquerade[B("10.244.1.3")] is False


# -- incremental behaviour -----------------------------------------------------------------------

def test_nft_delta_touches_only_the_changed_service() -> None:
    services = catalog()
    state = NftState(NODE)
    state.update({k: plan_service(s, e, NODE) for k, (s, e) in services.items()})
    key = ServiceKey("default", "web")
    s, _ = services[key]
    delta = state.update({key: plan_service(s, eps("10.244.1.2", "10.244.1.99"), NODE)})
    lines = delta.splitlines()
    assert lines == [      # cluster-tcp-2 exists already (np's ClusterIP uses it)
        "delete element ip netweft-proxy backends-tcp { 10.96.0.10 . 80 . 1, 10.96.0.10 . 80 . 2 }",
        # 10.244.2.2 is on another node: never in the hairpin set
        "delete element ip netweft-proxy hairpin { 10.244.1.3 . 10.244.1.3 }",
        "delete element ip netweft-proxy service-ips { 10.96.0.10 . tcp . 80 }",
        # every element says whose it is (namespace/service:port), like kube-proxy's
        "add element ip netweft-proxy backends-tcp { 10.96.0.10 . 80 . 1 "
        'comment "default/web:http" : 10.244.1.99 . 8080 }',
        "add element ip netweft-proxy hairpin { 10.244.1.99 . 10.244.1.99 "
        'comment "default/web:http" }',
        "add element ip netweft-proxy service-ips { 10.96.0.10 . tcp . 80 "
        'comment "default/web:http" : goto cluster-tcp-2 }',
        "delete chain ip netweft-proxy cluster-tcp-3",
    ]
    # the state after the delta equals a fresh full render of the new world
    services[key] = (s, eps("10.244.1.2", "10.244.1.99"))
    assert state.full_text() == render("nftables", services)
    # no change -> no transaction
    assert state.update({key: plan_service(s, eps("10.244.1.2", "10.244.1.99"), NODE)}) == ""


def test_nft_shared_elements_are_refcounted() -> None:
    a = svc("a", ip="10.96.1.1")
    b = svc("b", ip="10.96.1.2")
    state = NftState(NODE)
    state.update({a.key: plan_service(a, eps("10.244.1.2"), NODE),
                  b.key: plan_service(b, eps("10.244.1.2"), NODE)})
    delta = state.update({a.key: None})
    assert "hairpin" not in delta and "cluster-tcp-1" not in delta   # b still needs both
    delta = state.update({b.key: None})
    assert "delete element ip netweft-proxy hairpin { 10.244.1.2 . 10.244.1.2 }" in delta
    assert "delete chain ip netweft-proxy cluster-tcp-1" in delta


def test_nft_affinity_chains_only_for_affinity_services() -> None:
    text = render("nftables")
    chains = [ln.split()[1] for ln in text.splitlines() if ln.startswith("\tchain ")]
    per_service = [c for c in chains if c.startswith("aff")]
    assert len(per_service) == 3           # 1 entry chain + 2 backend chains for "sticky"
    assert text.count("vmap {") == 1       # the only anonymous map is sticky's random pick


def test_iptables_delta_writes_only_changed_chains() -> None:
    services = catalog()
    state = IptState(NODE)
    state.update({k: plan_service(s, e, NODE) for k, (s, e) in services.items()})
    key = ServiceKey("default", "dns")
    s, _ = services[key]
    delta = state.update({key: plan_service(s, eps("10.244.1.40", proto=Protocol.UDP,
                                                   port=5353), NODE)})
    declared = [ln for ln in delta.splitlines() if ln.startswith(":")]
    assert len(declared) == 3     # the service chain, the old and the new endpoint chain
    assert "-X NETWEFT-SEP-" in delta and "*filter" not in delta
    services[key] = (s, eps("10.244.1.40", proto=Protocol.UDP, port=5353))
    assert state.full_text() == render("iptables", services)


@pytest.mark.parametrize("mode", MODES)
def test_tcp_and_udp_on_one_node_port(mode: str) -> None:
    """53/UDP and 53/TCP sharing node port 30053 (Kubernetes allocates it once): each protocol
    reaches its own endpoint port on the node port and on the cluster IP."""
    dns = Service(ServiceKey("kube-system", "dns"), ServiceType.NODE_PORT, ("10.96.0.53",),
                  (ServicePort("dns", Protocol.UDP, 53, 5353, 30053),
                   ServicePort("dns-tcp", Protocol.TCP, 53, 5354, 30053)))
    pod = (Endpoint("10.244.1.4", (EndpointPort("dns", 5353, Protocol.UDP),
                                   EndpointPort("dns-tcp", 5354, Protocol.TCP)), node="node-a"),)
    t = tracer(mode, ruleset(mode, {dns.key: (dns, pod)}))
    for dst, port in (("192.0.2.11", 30053), ("10.96.0.53", 53)):
        assert t.trace(Packet(OUTSIDE, dst, "udp", port)).endpoints == {B("10.244.1.4", 5353)}
        assert t.trace(Packet(OUTSIDE, dst, "tcp", port)).endpoints == {B("10.244.1.4", 5354)}


def test_nft_deltas_applied_to_the_fake_equal_a_fresh_full_load() -> None:
    """Every delta transaction, applied in memory like the kernel would (refusing deletes of
    what is not there), leaves the same table as a full load of the new world."""
    services = catalog()
    state, fake = _state_of(services), FakeNft()
    fake.apply(state.full_transaction())
    steps = [
        ("web", eps("10.244.1.2", "10.244.1.99")),             # endpoint replaced, 3 -> 2
        ("sticky", eps("10.244.1.10")),                          # affinity chains removed
        ("empty", eps("10.244.1.30")),                           # reject -> balance
        ("np", ()),                                              # balance -> reject
        ("sticky", eps("10.244.1.10", "10.244.1.11", "10.244.1.12")),
    ]
    for name, endpoints in steps:
        key = ServiceKey("default", name)
        services[key] = (services[key][0], endpoints)
        fake.apply(state.update_transaction({key: plan_service(services[key][0], endpoints,
                                                               NODE)}))
        fresh = FakeNft()
        fresh.apply(_state_of(services).full_transaction())
        assert fake.tables == fresh.tables, name
    fake.apply(state.update_transaction({k: None for k in services}))
    assert not any(fake.table("ip netweft-proxy").elements[n] for n in (
        "service-ips", "backends-tcp", "hairpin", "no-endpoint-ips"))


def _state_of(services: dict) -> NftState:
    state = NftState(NODE)
    state.update({k: plan_service(s, e, NODE) for k, (s, e) in services.items()})
    return state
