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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from netweft.proxy.constants import MASQUERADE_MARK, NFT_TABLE
from netweft.proxy.model import ServiceKey
from netweft.proxy.plan import Backend, Frontend, FrontendKind, NodeContext, Outcome, ServicePlan

T = f"ip {NFT_TABLE}"
IP_KEY = "ip daddr . meta l4proto . th dport"
NODEPORT_KEY = "meta l4proto . th dport"
MARK = f"0x{MASQUERADE_MARK:x}"
SET_MARK = f"meta mark set meta mark | {MARK}"
REJECT_CHAIN = "reject-new"
PROTOCOLS = ("tcp", "udp", "sctp")
ELEMENTS_PER_STATEMENT = 200

# Static sets and maps: name -> declaration.
STATIC_SETS: dict[str, str] = {
    "nodeport-ips": "type ipv4_addr;",
    "cluster-cidrs": "type ipv4_addr; flags interval;",
    "service-ips": "type ipv4_addr . inet_proto . inet_service : verdict;",
    "service-nodeports": "type inet_proto . inet_service : verdict;",
    "no-endpoint-ips": "type ipv4_addr . inet_proto . inet_service : verdict;",
    "no-endpoint-nodeports": "type inet_proto . inet_service : verdict;",
    # typeof names the protocol (``tcp dport``, not ``th dport``): nft re-evaluates a map's
    # typeof from the kernel when a later transaction adds a rule using it, in the context of
    # that rule's ``meta l4proto tcp``, and nft 1.0.6 rejects ``th`` there ("conflicting
    # protocols specified: tcp vs. th"); in a full load the map is declared before any rule
    # and ``th`` passed, so only deltas creating a new group chain failed (issue 9, item 1).
    **{f"backends-{p}": f"typeof ip daddr . {p} dport . numgen random mod 1 : ip daddr . {p} dport;"
       for p in PROTOCOLS},
    **{f"nodeport-backends-{p}": f"typeof {p} dport . numgen random mod 1 : ip daddr . {p} dport;"
       for p in PROTOCOLS},
    "firewall-ips": "type ipv4_addr . inet_proto . inet_service;",
    "firewall-allow": "type ipv4_addr . inet_proto . inet_service . ipv4_addr; flags interval;",
    "hairpin": "type ipv4_addr . ipv4_addr;",
}
MAPS = {"service-ips", "service-nodeports", "no-endpoint-ips", "no-endpoint-nodeports",
        *(f"{m}-{p}" for m in ("backends", "nodeport-backends") for p in PROTOCOLS)}


def static_chains(node: NodeContext) -> dict[str, tuple[str, ...]]:
    """The fixed chains: hooks, the dispatch chain, reject and masquerade."""
    no_endpoints = (
        f"ct state new {IP_KEY} vmap @no-endpoint-ips",
        f"ct state new ip daddr @nodeport-ips {NODEPORT_KEY} vmap @no-endpoint-nodeports",
    )
    return {
        REJECT_CHAIN: ("meta l4proto tcp reject with tcp reset", "reject"),
        "services": (
            f"{IP_KEY} vmap @service-ips",
            f"ip daddr @nodeport-ips {NODEPORT_KEY} vmap @service-nodeports",
        ),
        "nat-prerouting": ("type nat hook prerouting priority dstnat; policy accept;",
                           "jump services"),
        "nat-output": ("type nat hook output priority -100; policy accept;", "jump services"),
        "nat-postrouting": (
            "type nat hook postrouting priority srcnat - 10; policy accept;",
            f"ct status dnat ip saddr . ip daddr @hairpin {SET_MARK}",
            f"meta mark & {MARK} == 0 return",
            f"meta mark set meta mark ^ {MARK}",
            "masquerade fully-random",
        ),
        "filter-prerouting": (
            "type filter hook prerouting priority dstnat - 10; policy accept;",
            f"{IP_KEY} @firewall-ips {IP_KEY} . ip saddr != @firewall-allow drop",
        ),
        "filter-input": ("type filter hook input priority filter - 5; policy accept;",
                         *no_endpoints),
        "filter-forward": ("type filter hook forward priority filter - 5; policy accept;",
                           no_endpoints[0]),
        "filter-output": ("type filter hook output priority filter - 5; policy accept;",
                          *no_endpoints),
    }


@dataclass(frozen=True)
class NftObject:
    """A set or chain that exists because some service needs it (shared ones are refcounted)."""
    kind: str                 # "set" | "chain"
    name: str
    level: int                # created in ascending, deleted in descending order
    body: tuple[str, ...]     # chain: its rules; set: its declaration
    timeout: int | None = None  # seconds: the default timeout of a dynamic (affinity) set


@dataclass
class Contribution:
    elements: dict[tuple[str, str], str | None] = field(default_factory=dict)
    objects: dict[str, NftObject] = field(default_factory=dict)


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
        return ("ip saddr != @cluster-cidrs " + SET_MARK,) if has_cidrs else ()
    if fam in ("external", "nodeport"):
        return (SET_MARK,)
    return ()


def group_chain(fam: str, proto: str, count: int, node: NodeContext) -> NftObject:
    return _group_chain(fam, proto, count, bool(node.cluster_cidrs))


@functools.lru_cache(maxsize=4096)
def _group_chain(fam: str, proto: str, count: int, has_cidrs: bool) -> NftObject:
    if fam.startswith("nodeport"):
        dnat = (f"meta l4proto {proto} dnat ip to th dport . numgen random mod {count} "
                f"map @nodeport-backends-{proto}")
    else:
        dnat = (f"meta l4proto {proto} dnat ip to ip daddr . th dport . numgen random mod "
                f"{count} map @backends-{proto}")
    return NftObject("chain", f"{fam}-{proto}-{count}", 2, (*mark_rule(fam, has_cidrs), dnat))


def _short_hash(*parts: object) -> str:
    return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:12]


def frontend_key(fe: Frontend) -> str:
    proto = fe.protocol.lower()
    return f"{proto} . {fe.port}" if fe.address is None else f"{fe.address} . {proto} . {fe.port}"


def affinity_objects(fe: Frontend, fam: str, node: NodeContext) -> tuple[str, list[NftObject]]:
    """The per-service chains session affinity needs; returns (entry chain, objects)."""
    h = _short_hash(fe.service, fe.port_name, fam, fe.affinity_timeout)
    objects: list[NftObject] = []
    sticky: list[str] = []
    picks: list[str] = []
    for b in fe.backends:
        bh = _short_hash(b)[:8]
        set_name, chain_name = f"aff-{h}-{bh}", f"affep-{h}-{bh}"
        objects.append(NftObject("set", set_name, 0, (
            "type ipv4_addr;", "flags dynamic,timeout;", f"timeout {fe.affinity_timeout}s;"),
            fe.affinity_timeout))
        objects.append(NftObject("chain", chain_name, 1, (
            f"update @{set_name} {{ ip saddr }}",
            f"meta l4proto {fe.protocol.lower()} dnat ip to {b.address}:{b.port}")))
        sticky.append(f"ip saddr @{set_name} goto {chain_name}")
        picks.append(chain_name)
    if len(picks) == 1:
        pick = f"goto {picks[0]}"
    else:
        pick = "numgen random mod {} vmap {{ {} }}".format(
            len(picks), ", ".join(f"{i} : goto {c}" for i, c in enumerate(picks)))
    entry = f"aff-{h}"
    objects.append(NftObject("chain", entry, 2, (*mark_rule(fam, bool(node.cluster_cidrs)),
                                                 *sticky, pick)))
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
    for fe in plan.frontends:
        key = frontend_key(fe)
        nodeport = fe.address is None
        if fe.source_ranges and not nodeport:
            el[("firewall-ips", key)] = None
            for r in filter(None, map(_range, fe.source_ranges)):
                el[("firewall-allow", f"{key} . {r}")] = None
        if fe.outcome is not Outcome.BALANCE:
            verdict = f"goto {REJECT_CHAIN}" if fe.outcome is Outcome.REJECT else "drop"
            el[("no-endpoint-nodeports" if nodeport else "no-endpoint-ips", key)] = verdict
            continue
        fam = family(fe)
        if fe.affinity_timeout is not None:
            entry, objects = affinity_objects(fe, fam, node)
            for obj in objects:
                out.objects[obj.name] = obj
            verdict = f"goto {entry}"
        else:
            proto = fe.protocol.lower()
            chain = group_chain(fam, proto, len(fe.backends), node)
            out.objects[chain.name] = chain
            verdict = f"goto {chain.name}"
            if nodeport:
                backends, short = f"nodeport-backends-{proto}", str(fe.port)
            else:
                backends, short = f"backends-{proto}", f"{fe.address} . {fe.port}"
            for i, b in enumerate(fe.backends):
                el[(backends, f"{short} . {i}")] = f"{b.address} . {b.port}"
        el[("service-nodeports" if nodeport else "service-ips", key)] = verdict
        for b in fe.backends:
            if b.address in plan.local_addresses:      # only a pod of this node can hairpin
                el[("hairpin", f"{b.address} . {b.address}")] = None
    return out


_ABSENT = object()
EKey = tuple[str, str]


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
            return ""
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
        return delta_text(before_el, after_el, before_ob, after_ob)

    def full_text(self, sort: bool = True) -> str:
        """The whole table, replacing whatever is there, as one transaction (``sort``: elements
        in a stable order, for golden files; the kernel does not care)."""
        objects = [o for o in (self._object(n) for n in self.objects) if o]
        return full_text(self.node, self.values, objects, sort)

    def affinity_timeouts(self) -> dict[str, int]:
        """{affinity set of the desired table: its timeout in seconds} (empty without any
        sessionAffinity service)."""
        return {n: o.timeout for n, o in self.object_defs.items()
                if o.kind == "set" and o.timeout is not None}

    def counts(self) -> tuple[int, int, int]:
        """(chains, rules, elements) of the desired table."""
        chains = static_chains(self.node)
        objects = [o for o in (self._object(n) for n in self.objects) if o]
        n_chains = len(chains) + sum(1 for o in objects if o.kind == "chain")
        n_rules = sum(len(r) for r in chains.values()) + sum(
            len(o.body) for o in objects if o.kind == "chain")
        n_el = len(self.values) + len(self.node.node_ips) + len(self.node.cluster_cidrs)
        return n_chains, n_rules, n_el


def _element_text(k: str, v: str | None) -> str:
    return k if v is None else f"{k} : {v}"


def _grouped(items: Iterable[tuple[EKey, object]], sort: bool = True) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for (name, k), v in (sorted(items, key=lambda kv: kv[0]) if sort else items):
        out.setdefault(name, []).append(k if v is None else f"{k} : {v}")
    if not sort:
        return out
    return dict(sorted(out.items()))


def _set_decl(obj: NftObject) -> str:
    return " ".join(obj.body)


def delta_text(
    before_el: Mapping[tuple[str, str], object], after_el: Mapping[tuple[str, str], object],
    before_ob: Mapping[str, NftObject | None], after_ob: Mapping[str, NftObject | None],
) -> str:
    lines: list[str] = []
    created = sorted((o for n, o in after_ob.items() if o and not before_ob.get(n)),
                     key=lambda o: (o.level, o.name))
    changed = sorted((o for n, o in after_ob.items()
                      if o and before_ob.get(n) and before_ob[n] != o and o.kind == "chain"),
                     key=lambda o: (o.level, o.name))
    removed = sorted((o for n, o in before_ob.items() if o and not after_ob.get(n)),
                     key=lambda o: (-o.level, o.name))
    for o in created:
        if o.kind == "set":
            lines.append(f"add set {T} {o.name} {{ {_set_decl(o)} }}")
        else:
            lines.append(f"add chain {T} {o.name}")
    for o in created:
        if o.kind == "chain":
            lines.extend(f"add rule {T} {o.name} {r}" for r in o.body)
    for o in changed:
        lines.append(f"flush chain {T} {o.name}")
        lines.extend(f"add rule {T} {o.name} {r}" for r in o.body)
    dels = [(k, None) for k, v in before_el.items()
            if v is not _ABSENT and after_el.get(k, _ABSENT) != v]
    adds = [(k, v) for k, v in after_el.items()
            if v is not _ABSENT and before_el.get(k, _ABSENT) != v]
    for name, items in _grouped(dels).items():
        lines.append(f"delete element {T} {name} {{ {', '.join(items)} }}")
    for name, items in _grouped(adds).items():  # type: ignore[arg-type]
        lines.append(f"add element {T} {name} {{ {', '.join(items)} }}")
    for o in removed:
        lines.append(f"delete {o.kind} {T} {o.name}")
    return "\n".join(lines) + ("\n" if lines else "")


def full_text(node: NodeContext, elements: Mapping[EKey, object],
              objects: Iterable[NftObject], sort: bool = True) -> str:
    """The complete table: ``add table; delete table`` then the definition, one transaction."""
    out = [f"add table {T}", f"delete table {T}", f"table {T} {{"]
    for name, decl in STATIC_SETS.items():
        out.append(f"\t{'map' if name in MAPS else 'set'} {name} {{ {decl} }}")
    objs = sorted(objects, key=lambda o: (o.level, o.name))
    for o in objs:
        if o.kind == "set":
            out.append(f"\tset {o.name} {{ {_set_decl(o)} }}")
    chains = [(n, body) for n, body in static_chains(node).items()]
    chains[1:1] = [(o.name, o.body) for o in objs if o.kind == "chain"]
    for name, body in chains:
        out.append(f"\tchain {name} {{")
        out.extend(f"\t\t{r}" for r in body)
        out.append("\t}")
    out.append("}")
    static_el: list[tuple[tuple[str, str], str | None]] = [
        (("nodeport-ips", ip), None) for ip in node.node_ips]
    static_el += [(("cluster-cidrs", c), None) for c in node.cluster_cidrs]
    for name, items in _grouped([*static_el, *elements.items()], sort).items():
        # statements of a few hundred elements load measurably faster than one huge one
        for i in range(0, len(items), ELEMENTS_PER_STATEMENT):
            chunk = items[i:i + ELEMENTS_PER_STATEMENT]
            out.append(f"add element {T} {name} {{ {', '.join(chunk)} }}")
    return "\n".join(out) + "\n"


def delete_text() -> str:
    """Remove the table (``netweft proxy --cleanup``); harmless when it does not exist."""
    return f"add table {T}\ndelete table {T}\n"


def backend_set(plan: ServicePlan) -> set[Backend]:
    return {b for fe in plan.frontends for b in fe.backends}
