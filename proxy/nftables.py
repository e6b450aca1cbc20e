"""The nftables renderer: service plans -> one ``ip netweft-proxy`` table, full or as a delta.

Layout (why: loading cost grows about quadratically with the number of chains and of anonymous
sets/maps, so the common path has neither per service nor per endpoint):

* ``service-ips`` (``daddr . l4proto . dport : verdict``) and ``service-nodeports``
  (``l4proto . dport : verdict``) send the first packet of a connection to a *group chain* named
  after what the frontend needs, its protocol and how many backends it has: ``cluster-tcp-3``,
  ``external-udp-2``, ``local-tcp-1``, ``nodeport-tcp-3``, ``nodeport-local-sctp-1``. There is
  one group chain per (kind, protocol, count) in use -- a handful, whatever the number of
  services.
* a group chain sets the masquerade mark when the kind needs it, then DNATs through one shared
  named map per protocol: ``meta l4proto tcp dnat ip to ip daddr . th dport . numgen random
  mod N map @backends-tcp`` (``@nodeport-backends-tcp`` keyed without the address for nodePorts; the
  protocol is in the map's name rather than in its key: a shorter key is cheaper to load). A
  service with 3 backends contributes elements ``<address> . <port> . 0|1|2 : <backend>``.
* ``no-endpoint-ips`` / ``no-endpoint-nodeports`` (filter input/forward/output, new connections):
  ``goto reject-new`` for services without endpoints (ICMP port unreachable / TCP reset),
  ``drop`` when endpoints exist but none is local under a Local policy.
* ``firewall-ips`` + ``firewall-allow`` (an interval set of ``frontend . source range``):
  loadBalancerSourceRanges without a chain per service.
* externalTrafficPolicy Local frontends: their group chain (``nodeport-local-tcp-<L>-<N>``)
  first sends pod-network clients, then the node itself (masqueraded), to the service's N
  endpoints (map indices L..), as kube-proxy's EXT chain does; everyone else gets the L local
  ones, or falls through to the ``drop`` when there is none.
* ``hairpin`` (``ep . ep``): postrouting marks a DNATed packet whose source is its own backend.
* the only per-service chains are for sessionAffinity ClientIP, which needs per-backend state:
  ``aff-<h>`` (a sticky lookup per backend, then a random pick) and ``affep-<h>-<b>`` (remember the
  client in the dynamic set ``aff-<h>-<b>`` with the service's timeout, DNAT to the backend).

A change to one service is a delta of its elements (and of its affinity chains, if any) in one
``nft -f -`` transaction; everything is computed here, nothing reads the kernel.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from netweft.backends.nft.tx import (
    AddChain,
    AddRules,
    AddSet,
    Chain,
    DeleteObject,
    DeleteTable,
    Element,
    FlushChain,
    Hook,
    NftSet,
    ReplaceTable,
    Transaction,
)
from netweft.proxy.constants import MASQUERADE_MARK, NFT_TABLE
from netweft.proxy.model import ServiceKey
from netweft.proxy.plan import Frontend, FrontendKind, NodeContext, Outcome, ServicePlan

FAMILY = "ip"
EKey = tuple[str, str]       # (set or map name, element key)
T = f"{FAMILY} {NFT_TABLE}"
IP_KEY = "ip daddr . meta l4proto . th dport"
NODEPORT_KEY = "meta l4proto . th dport"
MARK = f"0x{MASQUERADE_MARK:x}"
SET_MARK = f"meta mark set meta mark | {MARK}"
PROTOCOLS = ("tcp", "udp", "sctp")

# Every name in the table, once.
NODEPORT_IPS = "nodeport-ips"
CLUSTER_CIDRS = "cluster-cidrs"
SERVICE_IPS = "service-ips"
SERVICE_NODEPORTS = "service-nodeports"
NO_ENDPOINT_IPS = "no-endpoint-ips"
NO_ENDPOINT_NODEPORTS = "no-endpoint-nodeports"
FIREWALL_IPS = "firewall-ips"
FIREWALL_ALLOW = "firewall-allow"
HAIRPIN = "hairpin"
REJECT_CHAIN = "reject-new"
SERVICES_CHAIN = "services"
NAT_PREROUTING = "nat-prerouting"
NAT_OUTPUT = "nat-output"
NAT_POSTROUTING = "nat-postrouting"
FILTER_PREROUTING = "filter-prerouting"
FILTER_INPUT = "filter-input"
FILTER_FORWARD = "filter-forward"
FILTER_OUTPUT = "filter-output"
AFFINITY_PREFIX = "aff-"          # aff-<h> entry chains, aff-<h>-<b> sets
AFFINITY_ENDPOINT_PREFIX = "affep-"


def backends_map(proto: str) -> str:
    """The DNAT map of ClusterIP/external frontends of one protocol: ``backends-tcp``."""
    return f"backends-{proto}"


def nodeport_backends_map(proto: str) -> str:
    """The DNAT map of nodePorts of one protocol: ``nodeport-backends-tcp``."""
    return f"nodeport-backends-{proto}"


_VERDICT_KEY = "type ipv4_addr . inet_proto . inet_service : verdict"
STATIC_SETS: tuple[NftSet, ...] = (
    NftSet(NODEPORT_IPS, "type ipv4_addr"),
    NftSet(CLUSTER_CIDRS, "type ipv4_addr", flags=("interval",)),
    NftSet(SERVICE_IPS, _VERDICT_KEY, is_map=True),
    NftSet(SERVICE_NODEPORTS, "type inet_proto . inet_service : verdict", is_map=True),
    NftSet(NO_ENDPOINT_IPS, _VERDICT_KEY, is_map=True),
    NftSet(NO_ENDPOINT_NODEPORTS, "type inet_proto . inet_service : verdict", is_map=True),
    # typeof names the protocol (``tcp dport``, not ``th dport``): nft re-evaluates a map's
    # typeof from the kernel when a later transaction adds a rule using it, in the context of
    # that rule's ``meta l4proto tcp``, and nft 1.0.6 rejects ``th`` there ("conflicting
    # protocols specified: tcp vs. th"); in a full load the map is declared before any rule
    # and ``th`` passed, so only deltas creating a new group chain failed (issue 9, item 1).
    *(NftSet(backends_map(p),
             f"typeof ip daddr . {p} dport . numgen random mod 1 : ip daddr . {p} dport",
             is_map=True) for p in PROTOCOLS),
    *(NftSet(nodeport_backends_map(p),
             f"typeof {p} dport . numgen random mod 1 : ip daddr . {p} dport", is_map=True)
      for p in PROTOCOLS),
    NftSet(FIREWALL_IPS, "type ipv4_addr . inet_proto . inet_service"),
    NftSet(FIREWALL_ALLOW, "type ipv4_addr . inet_proto . inet_service . ipv4_addr",
           flags=("interval",)),
    NftSet(HAIRPIN, "type ipv4_addr . ipv4_addr"),
)


def static_chains(node: NodeContext) -> tuple[Chain, ...]:
    """The fixed chains: hooks, the dispatch chain, reject and masquerade (in table order)."""
    no_endpoints = (
        f"ct state new {IP_KEY} vmap @{NO_ENDPOINT_IPS}",
        f"ct state new ip daddr @{NODEPORT_IPS} {NODEPORT_KEY} vmap @{NO_ENDPOINT_NODEPORTS}",
    )
    return (
        Chain(REJECT_CHAIN, ("meta l4proto tcp reject with tcp reset", "reject")),
        Chain(SERVICES_CHAIN, (
            f"{IP_KEY} vmap @{SERVICE_IPS}",
            f"ip daddr @{NODEPORT_IPS} {NODEPORT_KEY} vmap @{SERVICE_NODEPORTS}",
        )),
        Chain(NAT_PREROUTING, (f"jump {SERVICES_CHAIN}",), Hook("nat", "prerouting", "dstnat")),
        Chain(NAT_OUTPUT, (f"jump {SERVICES_CHAIN}",), Hook("nat", "output", "-100")),
        # the mark first, as kube-proxy's ``masquerading`` chain: a marked connection (an
        # off-cluster client of a ClusterIP, every NodePort/external client under policy
        # Cluster) is masqueraded without the hairpin lookup; only unmarked DNATed ones (pods)
        # are looked up in @hairpin. ``masquerade`` ends the chain (the packet is accepted).
        Chain(NAT_POSTROUTING, (
            f"meta mark & {MARK} != 0 meta mark set meta mark ^ {MARK} masquerade fully-random",
            f"ct status dnat ip saddr . ip daddr @{HAIRPIN} masquerade fully-random",
        ), Hook("nat", "postrouting", "srcnat - 10")),
        # new connections only, as kube-proxy's ``ct state new jump firewall-check``: this hook
        # sees every packet the node receives (pod traffic too), and a packet of an accepted
        # connection then costs one conntrack-state test instead of a set lookup
        Chain(FILTER_PREROUTING, (
            f"ct state new {IP_KEY} @{FIREWALL_IPS} "
            f"{IP_KEY} . ip saddr != @{FIREWALL_ALLOW} drop",),
            Hook("filter", "prerouting", "dstnat - 10")),
        Chain(FILTER_INPUT, no_endpoints, Hook("filter", "input", "filter - 5")),
        Chain(FILTER_FORWARD, no_endpoints[:1], Hook("filter", "forward", "filter - 5")),
        Chain(FILTER_OUTPUT, no_endpoints, Hook("filter", "output", "filter - 5")),
    )


@dataclass(frozen=True)
class NftObject:
    """A set or chain that exists because some service needs it (shared ones are refcounted);
    created in ascending, deleted in descending ``level``."""
    level: int
    obj: Chain | NftSet

    @property
    def name(self) -> str:
        return self.obj.name

    @property
    def kind(self) -> str:
        return self.obj.kind


@dataclass
class Contribution:
    """Everything one service adds: elements ((set, key) -> value or None), the readable comment
    of each element (``namespace/service:port``, as kube-proxy comments its elements), and the
    chains and sets it needs."""
    elements: dict[tuple[str, str], str | None] = field(default_factory=dict)
    objects: dict[str, NftObject] = field(default_factory=dict)
    comments: dict[tuple[str, str], str] = field(default_factory=dict)


def family(fe: Frontend) -> str:
    if fe.kind is FrontendKind.CLUSTER:
        return "cluster"
    if fe.kind is FrontendKind.EXTERNAL:
        return "local" if fe.local else "external"
    return "nodeport-local" if fe.local else "nodeport"


def mark_rule(fam: str, has_cidrs: bool) -> tuple[str, ...]:
    """Set the masquerade mark: off-cluster clients of a ClusterIP (when the pod network is
    known), every client of an external frontend with policy Cluster, nobody under Local."""
    if fam == "cluster":
        return (f"ip saddr != @{CLUSTER_CIDRS} {SET_MARK}",) if has_cidrs else ()
    if fam in ("external", "nodeport"):
        return (SET_MARK,)
    return ()


def group_chain(fam: str, proto: str, count: int, node: NodeContext,
                short_circuit: int = 0) -> NftObject:
    return _group_chain(fam, proto, count, bool(node.cluster_cidrs), short_circuit)


def short_circuit_rules(has_cidrs: bool, target: str) -> tuple[str, ...]:
    """Before an externalTrafficPolicy Local frontend picks a local endpoint: clients in the pod
    network, then the node itself (masqueraded: its source is a node address), go to ``target``
    (a DNAT over every endpoint, or ``goto`` a chain doing it) -- kube-proxy's EXT chain rules
    "short-circuit pod traffic", "masquerade local traffic", "short-circuit local traffic"."""
    pods = (f"ip saddr @{CLUSTER_CIDRS} {target}",) if has_cidrs else ()
    return (*pods, f"fib saddr type local {SET_MARK} {target}")


def _dnat(fam: str, proto: str, count: int, offset: int = 0) -> str:
    """DNAT to one of ``count`` backends at indices ``offset``.. of the protocol's map."""
    pick = f"numgen random mod {count}" + (f" offset {offset}" if offset else "")
    if fam.startswith("nodeport"):
        return (f"meta l4proto {proto} dnat ip to th dport . {pick} "
                f"map @{nodeport_backends_map(proto)}")
    return (f"meta l4proto {proto} dnat ip to ip daddr . th dport . {pick} "
            f"map @{backends_map(proto)}")


@functools.lru_cache(maxsize=4096)
def _group_chain(fam: str, proto: str, count: int, has_cidrs: bool,
                 short_circuit: int = 0) -> NftObject:
    """The chain of frontends of one kind, protocol and backend count; ``short_circuit``: the
    number of backends (at indices ``count``..) of a Local frontend's pod and node clients
    (``<fam>-<proto>-<count>-<short_circuit>``; ``count`` may then be 0: the other clients
    fall through, to the ``drop`` of ``no-endpoint-*``)."""
    if not short_circuit:
        return NftObject(2, Chain(f"{fam}-{proto}-{count}",
                                  (*mark_rule(fam, has_cidrs), _dnat(fam, proto, count))))
    rules = short_circuit_rules(has_cidrs, _dnat(fam, proto, short_circuit, count))
    own = (_dnat(fam, proto, count),) if count else ()
    return NftObject(2, Chain(f"{fam}-{proto}-{count}-{short_circuit}", (*rules, *own)))


def _short_hash(*parts: object) -> str:
    return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:12]


def frontend_key(fe: Frontend) -> str:
    proto = fe.protocol.lower()
    return f"{proto} . {fe.port}" if fe.address is None else f"{fe.address} . {proto} . {fe.port}"


def affinity_objects(fe: Frontend, fam: str, node: NodeContext) -> tuple[str, list[NftObject]]:
    """The per-service chains session affinity needs; returns (entry chain, objects). A Local
    frontend's short-circuit backends get an entry chain of their own (family
    ``short-circuit``) that the frontend's entry chain (one level up: deleted first) jumps to."""
    h = _short_hash(fe.service, fe.port_name, fam, fe.affinity_timeout)
    objects: list[NftObject] = []
    prefix: tuple[str, ...] = ()
    level = 2
    if fe.short_circuit:
        sc_entry, sc_objects = affinity_objects(
            replace(fe, endpoints=fe.short_circuit, short_circuit=()), "short-circuit", node)
        objects += sc_objects
        prefix = short_circuit_rules(bool(node.cluster_cidrs), f"goto {sc_entry}")
        level = 3
    sticky: list[str] = []
    picks: list[str] = []
    for b in fe.endpoints:
        bh = _short_hash(b)[:8]
        set_name = f"{AFFINITY_PREFIX}{h}-{bh}"
        chain_name = f"{AFFINITY_ENDPOINT_PREFIX}{h}-{bh}"
        objects.append(NftObject(0, NftSet(set_name, "type ipv4_addr",
                                           flags=("dynamic", "timeout"),
                                           timeout=fe.affinity_timeout)))
        objects.append(NftObject(1, Chain(chain_name, (
            f"update @{set_name} {{ ip saddr }}",
            f"meta l4proto {fe.protocol.lower()} dnat ip to {b.address}:{b.port}"))))
        sticky.append(f"ip saddr @{set_name} goto {chain_name}")
        picks.append(chain_name)
    if not picks:
        pick: tuple[str, ...] = ()      # no local endpoint: the rest falls through to the drop
    elif len(picks) == 1:
        pick = (f"goto {picks[0]}",)
    else:
        pick = ("numgen random mod {} vmap {{ {} }}".format(
            len(picks), ", ".join(f"{i} : goto {c}" for i, c in enumerate(picks))),)
    entry = f"{AFFINITY_PREFIX}{h}"
    objects.append(NftObject(level, Chain(entry, (*mark_rule(fam, bool(node.cluster_cidrs)),
                                                  *prefix, *sticky, *pick))))
    return entry, objects


def _range(text: str) -> str | None:
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return None
    return str(net) if net.version == 4 else None


def contribution(plan: ServicePlan, node: NodeContext) -> Contribution:
    """Everything one service adds to the table (pure)."""
    out = Contribution()
    el = out.elements
    comments = out.comments
    for fe in plan.frontends:
        first = len(el)
        key = frontend_key(fe)
        nodeport = fe.address is None
        if fe.source_ranges and not nodeport:
            el[(FIREWALL_IPS, key)] = None
            for r in filter(None, map(_range, fe.source_ranges)):
                el[(FIREWALL_ALLOW, f"{key} . {r}")] = None
        if fe.outcome is not Outcome.BALANCE:
            verdict = f"goto {REJECT_CHAIN}" if fe.outcome is Outcome.REJECT else "drop"
            el[(NO_ENDPOINT_NODEPORTS if nodeport else NO_ENDPOINT_IPS, key)] = verdict
            if not fe.short_circuit:
                _comment(fe, el, comments, first)
                continue
            # Local without a local endpoint: pod and node clients are still DNATed (and so
            # no longer match the drop, which the filter hooks check after DNAT)
        fam = family(fe)
        if fe.affinity_timeout is not None:
            entry, objects = affinity_objects(fe, fam, node)
            for obj in objects:
                out.objects[obj.name] = obj
            verdict = f"goto {entry}"
        else:
            proto = fe.protocol.lower()
            chain = group_chain(fam, proto, len(fe.endpoints), node, len(fe.short_circuit))
            out.objects[chain.name] = chain
            verdict = f"goto {chain.name}"
            if nodeport:
                backends, short = nodeport_backends_map(proto), str(fe.port)
            else:
                backends, short = backends_map(proto), f"{fe.address} . {fe.port}"
            for i, b in enumerate((*fe.endpoints, *fe.short_circuit)):
                el[(backends, f"{short} . {i}")] = f"{b.address} . {b.port}"
        el[(SERVICE_NODEPORTS if nodeport else SERVICE_IPS, key)] = verdict
        for b in dict.fromkeys((*fe.endpoints, *fe.short_circuit)):
            if b.address in plan.local_addresses:      # only a pod of this node can hairpin
                el[(HAIRPIN, f"{b.address} . {b.address}")] = None
        _comment(fe, el, comments, first)
    return out


COMMENT_MAX = 128     # bytes nft keeps of an element comment


def _comment(fe: Frontend, elements: Mapping[EKey, object], comments: dict[EKey, str],
             first: int) -> None:
    """Comment the elements this frontend added (those after index ``first``; an element an
    earlier frontend of the same service added keeps that one's comment)."""
    text = f"{fe.service}:{fe.port_name or fe.port}"[:COMMENT_MAX]
    for k in itertools.islice(elements, first, None):
        comments.setdefault(k, text)


_ABSENT = object()


class NftState:
    """The desired table: per-service contributions merged into refcounted elements/objects.

    ``update`` records new plans and returns the nft commands that move the kernel from the
    previous desired state to the new one; ``full_text`` is the whole table (start, resync).
    Two services claiming the same element: the smaller service key wins, deterministically.
    """

    def __init__(self, node: NodeContext) -> None:
        self.node = node
        self.contribs: dict[ServiceKey, Contribution] = {}
        self.values: dict[EKey, str | None] = {}
        # one owner (the common case) or {owner: value} when services share an element
        self.owners: dict[EKey, ServiceKey | dict[ServiceKey, str | None]] = {}
        # object name -> the services needing it (group chains are shared by thousands), and
        # its definition (every service renders the same one for a shared name)
        self.objects: dict[str, set[ServiceKey]] = {}
        self.object_defs: dict[str, NftObject] = {}

    # -- state ---------------------------------------------------------------------------------
    def _object(self, name: str) -> NftObject | None:
        return self.object_defs.get(name)

    def _remove(self, key: ServiceKey, c: Contribution) -> None:
        values, owners = self.values, self.owners
        for k in c.elements:
            o = owners[k]
            if type(o) is dict:
                del o[key]
                if len(o) == 1:
                    ((sk, v),) = o.items()
                    owners[k], values[k] = sk, v
                else:
                    values[k] = o[min(o)]
            else:
                del owners[k]
                del values[k]
        for name in c.objects:
            owners_o = self.objects[name]
            owners_o.discard(key)
            if not owners_o:
                del self.objects[name]
                del self.object_defs[name]

    def _add(self, key: ServiceKey, c: Contribution) -> None:
        values, owners = self.values, self.owners
        for k, v in c.elements.items():
            o = owners.get(k)
            if o is None:
                owners[k] = key
                values[k] = v
            elif type(o) is dict:
                o[key] = v
                values[k] = o[min(o)]
            else:
                d: dict[ServiceKey, str | None] = {o: values[k], key: v}  # type: ignore[dict-item]
                owners[k] = d
                values[k] = d[min(d)]
        for name, obj in c.objects.items():
            self.objects.setdefault(name, set()).add(key)
            self.object_defs[name] = obj

    def update(self, plans: Mapping[ServiceKey, ServicePlan | None], delta: bool = True) -> str:
        """Record new plans (None: the service is gone); return the delta as nft commands
        (``delta=False``: skip computing it, a full load follows)."""
        return self.update_transaction(plans, delta).render()

    def update_transaction(self, plans: Mapping[ServiceKey, ServicePlan | None],
                           delta: bool = True) -> Transaction:
        """``update`` as a typed transaction (empty when nothing changed or ``delta=False``)."""
        new: dict[ServiceKey, Contribution | None] = {
            k: (contribution(p, self.node) if p is not None else None) for k, p in plans.items()}
        if not delta:
            for key, c in new.items():
                old = self.contribs.pop(key, None)
                if old is not None:
                    self._remove(key, old)
                if c is not None:
                    self._add(key, c)
                    self.contribs[key] = c
            return Transaction(FAMILY, NFT_TABLE)
        touched_el: set[EKey] = set()
        touched_ob: set[str] = set()
        for key, c in new.items():
            old = self.contribs.get(key)
            for x in (old, c):
                if x is not None:
                    touched_el.update(x.elements)
                    touched_ob.update(x.objects)
        values = self.values
        before_el = {k: values.get(k, _ABSENT) for k in touched_el}
        before_ob = {n: self._object(n) for n in touched_ob}
        for key, c in new.items():
            old = self.contribs.pop(key, None)
            if old is not None:
                self._remove(key, old)
            if c is not None:
                self._add(key, c)
                self.contribs[key] = c
        after_el = {k: values.get(k, _ABSENT) for k in touched_el}
        after_ob = {n: self._object(n) for n in touched_ob}
        return delta_transaction(before_el, after_el, before_ob, after_ob, self.comment)

    def full_text(self, sort: bool = True) -> str:
        """The whole table, replacing whatever is there, as one transaction (``sort``: elements
        in a stable order, for golden files; the kernel does not care)."""
        return self.full_transaction(sort).render()

    def full_transaction(self, sort: bool = True) -> Transaction:
        """``full_text`` as a typed transaction."""
        objects = [o for o in (self._object(n) for n in self.objects) if o]
        return full_transaction(self.node, self.values, objects, sort, self.comment)

    def comment(self, k: EKey) -> str | None:
        """The comment of element ``k``: that of the service owning it (the smallest service
        key when several share it); None for elements no service owns (node IPs, pod CIDRs)."""
        owner = self.owners.get(k)
        if owner is None:
            return None
        if type(owner) is dict:
            owner = min(owner)
        return self.contribs[owner].comments.get(k)  # type: ignore[index]

    def affinity_timeouts(self) -> dict[str, int]:
        """{affinity set of the desired table: its timeout in seconds} (empty without any
        sessionAffinity service)."""
        return {n: o.obj.timeout for n, o in self.object_defs.items()
                if isinstance(o.obj, NftSet) and o.obj.timeout is not None}

    def counts(self) -> tuple[int, int, int]:
        """(chains, rules, elements) of the desired table (a base chain's hook counts as a
        rule, as it always did in the metrics)."""
        chains = static_chains(self.node)
        objects = [o for o in (self._object(n) for n in self.objects) if o]
        object_chains = [o.obj for o in objects if isinstance(o.obj, Chain)]
        n_chains = len(chains) + len(object_chains)
        n_rules = sum(len(c.rules) + (c.hook is not None) for c in chains) + sum(
            len(c.rules) for c in object_chains)
        n_el = len(self.values) + len(self.node.node_ips) + len(self.node.cluster_cidrs)
        return n_chains, n_rules, n_el


def _grouped(items: Iterable[tuple[EKey, object]], sort: bool = True,
             comment: Callable[[EKey], str | None] | None = None) -> dict[str, list[Element]]:
    out: dict[str, list[Element]] = {}
    new = tuple.__new__     # Element(k, v, c) without the generated __new__: a full load makes
    for ek, v in (sorted(items, key=lambda kv: kv[0]) if sort else items):  # 40,000
        c = comment(ek) if comment is not None else None
        out.setdefault(ek[0], []).append(new(Element, (ek[1], v, c, None, None)))
    if not sort:
        return out
    return dict(sorted(out.items()))


def delta_transaction(
    before_el: Mapping[tuple[str, str], object], after_el: Mapping[tuple[str, str], object],
    before_ob: Mapping[str, NftObject | None], after_ob: Mapping[str, NftObject | None],
    comment: Callable[[EKey], str | None] | None = None,
) -> Transaction:
    """The changes from one desired state to the next: new sets and chains (then their
    rules, once every chain exists), rewritten chains, elements deleted then added, removed
    chains and sets last (nothing references them any more)."""
    tx = Transaction(FAMILY, NFT_TABLE)
    created = sorted((o for n, o in after_ob.items() if o and not before_ob.get(n)),
                     key=lambda o: (o.level, o.name))
    changed = sorted((o for n, o in after_ob.items()
                      if o and before_ob.get(n) and before_ob[n] != o and o.kind == "chain"),
                     key=lambda o: (o.level, o.name))
    removed = sorted((o for n, o in before_ob.items() if o and not after_ob.get(n)),
                     key=lambda o: (-o.level, o.name))
    for o in created:
        tx.add(AddSet(o.obj) if isinstance(o.obj, NftSet) else AddChain(o.obj))
    for o in created:
        if isinstance(o.obj, Chain):
            tx.add(AddRules(o.name, o.obj.rules))
    for o in changed:
        assert isinstance(o.obj, Chain)
        tx.add(FlushChain(o.name)).add(AddRules(o.name, o.obj.rules))
    dels = [(k, None) for k, v in before_el.items()
            if v is not _ABSENT and after_el.get(k, _ABSENT) != v]
    adds = [(k, v) for k, v in after_el.items()
            if v is not _ABSENT and before_el.get(k, _ABSENT) != v]
    for name, items in _grouped(dels).items():
        tx.delete_elements(name, (e.key for e in items))
    for name, items in _grouped(adds, comment=comment).items():
        tx.add_elements(name, items)
    for o in removed:
        tx.add(DeleteObject(o.kind, o.name))
    return tx


def full_transaction(node: NodeContext, elements: Mapping[EKey, object],
                     objects: Iterable[NftObject], sort: bool = True,
                     comment: Callable[[EKey], str | None] | None = None) -> Transaction:
    """The complete table (replacing whatever is there) and every element, one transaction."""
    objs = sorted(objects, key=lambda o: (o.level, o.name))
    sets = (*STATIC_SETS, *(o.obj for o in objs if isinstance(o.obj, NftSet)))
    static = static_chains(node)
    chains = (static[0], *(o.obj for o in objs if isinstance(o.obj, Chain)), *static[1:])
    tx = Transaction(FAMILY, NFT_TABLE, [ReplaceTable(sets, chains)])
    static_el: list[tuple[tuple[str, str], str | None]] = [
        ((NODEPORT_IPS, ip), None) for ip in node.node_ips]
    static_el += [((CLUSTER_CIDRS, c), None) for c in node.cluster_cidrs]
    for name, items in _grouped([*static_el, *elements.items()], sort, comment).items():
        tx.add_elements(name, items)
    return tx


def delete_text() -> str:
    """Remove the table (``netweft proxy --cleanup``); harmless when it does not exist."""
    return Transaction(FAMILY, NFT_TABLE, [DeleteTable()]).render()
