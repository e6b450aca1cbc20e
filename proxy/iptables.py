"""The iptables renderer (hosts without nftables): KUBE-style chains, applied with
``iptables-restore --noflush`` writing only the chains whose rules changed.

nat:    NETWEFT-SERVICES (from PREROUTING and OUTPUT) -> NETWEFT-SVC-<h> per service port and
        frontend family (masquerade mark, affinity checks, ``statistic`` random split) ->
        NETWEFT-SEP-<h> per backend (hairpin mark, affinity ``recent --set``, DNAT);
        NETWEFT-NODEPORTS (from NETWEFT-SERVICES for each node IP); NETWEFT-POSTROUTING
        (masquerade marked packets, clear the mark); NETWEFT-MARK-MASQ; NETWEFT-MARK-OFFCLUSTER.
        An externalTrafficPolicy Local SVC chain first sends pod-network and node clients to
        a SVC chain over every endpoint (kube-proxy's KUBE-EXT short-circuit).
filter: NETWEFT-FILTER (INPUT, FORWARD, OUTPUT, new connections): REJECT services without
        endpoints, DROP Local-policy frontends without local endpoints.
mangle: NETWEFT-FIREWALL (PREROUTING) -> NETWEFT-FW-<h>: loadBalancerSourceRanges.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from netweft.proxy.constants import MASQUERADE_MARK
from netweft.proxy.model import ServiceKey
from netweft.proxy.plan import Frontend, FrontendKind, NodeContext, Outcome, ServicePlan

P = "NETWEFT-"
SERVICES, NODEPORTS, POSTROUTING = P + "SERVICES", P + "NODEPORTS", P + "POSTROUTING"
MARK_MASQ, MARK_OFFCLUSTER = P + "MARK-MASQ", P + "MARK-OFFCLUSTER"
FILTER, FIREWALL = P + "FILTER", P + "FIREWALL"
MARK = f"0x{MASQUERADE_MARK:x}"

ChainId = tuple[str, str]     # (table, chain)

# Built-in chains that jump into ours: (table, builtin, rule args).
JUMPS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("nat", "PREROUTING", ("-j", SERVICES)),
    ("nat", "OUTPUT", ("-j", SERVICES)),
    ("nat", "POSTROUTING", ("-j", POSTROUTING)),
    ("filter", "INPUT", ("-m", "conntrack", "--ctstate", "NEW", "-j", FILTER)),
    ("filter", "FORWARD", ("-m", "conntrack", "--ctstate", "NEW", "-j", FILTER)),
    ("filter", "OUTPUT", ("-m", "conntrack", "--ctstate", "NEW", "-j", FILTER)),
    ("mangle", "PREROUTING", ("-j", FIREWALL)),
)
AGGREGATES: tuple[ChainId, ...] = (
    ("nat", SERVICES), ("nat", NODEPORTS), ("filter", FILTER), ("mangle", FIREWALL))
TABLES = ("nat", "filter", "mangle")


def static_chains(node: NodeContext) -> dict[ChainId, tuple[str, ...]]:
    offcluster = tuple(f"-s {c} -j RETURN" for c in node.cluster_cidrs)
    return {
        ("nat", MARK_MASQ): (f"-j MARK --or-mark {MARK}",),
        ("nat", MARK_OFFCLUSTER): (*offcluster, f"-j {MARK_MASQ}") if offcluster else (),
        ("nat", POSTROUTING): (
            f"-m mark ! --mark {MARK}/{MARK} -j RETURN",
            f"-j MARK --xor-mark {MARK}",
            "-j MASQUERADE --random-fully",
        ),
    }


def _h(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16].upper()


def _family(fe: Frontend) -> str:
    if fe.kind is FrontendKind.CLUSTER:
        return "cluster"
    return ("nodeport-" if fe.kind is FrontendKind.NODEPORT else "external-") + (
        "local" if fe.local else "cluster")


def _match(fe: Frontend, address: str | None) -> str:
    proto = fe.protocol.lower()
    dst = f"-d {address}/32 " if address else ""
    return f"{dst}-p {proto} -m {proto} --dport {fe.port}"


def _comment(fe: Frontend) -> str:
    name = f"{fe.service}:{fe.port_name}" if fe.port_name else str(fe.service)
    return f'-m comment --comment "{name}"'


@dataclass
class IptContribution:
    chains: dict[ChainId, tuple[str, ...]] = field(default_factory=dict)     # owned chains
    fragments: dict[ChainId, list[str]] = field(default_factory=dict)        # aggregate lines


def contribution(plan: ServicePlan, node: NodeContext) -> IptContribution:
    out = IptContribution()
    frag = out.fragments
    for fe in plan.frontends:
        nodeport = fe.kind is FrontendKind.NODEPORT
        if fe.source_ranges and not nodeport:
            ranges = []
            for r in fe.source_ranges:
                try:
                    net = ipaddress.ip_network(r.strip(), strict=False)
                except ValueError:
                    continue
                if net.version == 4:
                    ranges.append(f"-s {net} -j RETURN")
            fw = P + "FW-" + _h(fe.service, fe.port_name, fe.address)
            out.chains[("mangle", fw)] = (*ranges, "-j DROP")
            frag.setdefault(("mangle", FIREWALL), []).append(
                f"{_match(fe, fe.address)} {_comment(fe)} -j {fw}")
        if fe.outcome is not Outcome.BALANCE:
            target = "DROP"
            if fe.outcome is Outcome.REJECT:
                target = "REJECT --reject-with tcp-reset" if fe.protocol == "TCP" else "REJECT"
            addresses = node.node_ips if nodeport else (fe.address,)
            for a in addresses:
                frag.setdefault(("filter", FILTER), []).append(
                    f"{_match(fe, a)} {_comment(fe)} -j {target}")
            if not fe.short_circuit:
                continue
            # Local without a local endpoint: pod and node clients are still DNATed (and so
            # no longer match the DROP, which the filter table sees after DNAT)
        fam = _family(fe)
        svc = P + "SVC-" + _h(fe.service, fe.port_name, fam)
        if ("nat", svc) not in out.chains:
            out.chains[("nat", svc)] = _svc_chain(fe, fam, svc, node, out)
        if nodeport:
            frag.setdefault(("nat", NODEPORTS), []).append(
                f"{_match(fe, None)} {_comment(fe)} -j {svc}")
        else:
            frag.setdefault(("nat", SERVICES), []).append(
                f"{_match(fe, fe.address)} {_comment(fe)} -j {svc}")
    return out


def _svc_chain(fe: Frontend, fam: str, svc: str, node: NodeContext,
               out: IptContribution) -> tuple[str, ...]:
    rules: list[str] = []
    if fam == "cluster":
        if node.cluster_cidrs:
            rules.append(f"-j {MARK_OFFCLUSTER}")
    elif fam.endswith("-cluster"):
        rules.append(f"-j {MARK_MASQ}")
    if fe.short_circuit:
        # externalTrafficPolicy Local: pod-network clients, then the node itself (masqueraded),
        # reach every endpoint (kube-proxy's KUBE-EXT chain: "pod traffic for ... external
        # destinations", "masquerade LOCAL traffic", "route LOCAL traffic ... to service")
        every = P + "SVC-" + _h(fe.service, fe.port_name, fam, "short-circuit")
        out.chains[("nat", every)] = _svc_chain(
            replace(fe, endpoints=fe.short_circuit, short_circuit=()), "short-circuit", every,
            node, out)
        rules += [f"-s {c} -j {every}" for c in node.cluster_cidrs]
        rules += [f"-m addrtype --src-type LOCAL -j {MARK_MASQ}",
                  f"-m addrtype --src-type LOCAL -j {every}"]
    seps = []
    for b in fe.endpoints:
        sep = P + "SEP-" + _h(svc, b)
        seps.append(sep)
        sep_rules = [f"-s {b.address}/32 -j {MARK_MASQ}"]
        if fe.affinity_timeout is not None:
            sep_rules.append(f"-m recent --name {sep} --mask 255.255.255.255 --rsource --set")
        proto = fe.protocol.lower()
        sep_rules.append(f"-p {proto} -m {proto} -j DNAT --to-destination {b.address}:{b.port}")
        out.chains[("nat", sep)] = tuple(sep_rules)
    if fe.affinity_timeout is not None:
        rules.extend(
            f"-m recent --name {sep} --mask 255.255.255.255 --rsource --rcheck "
            f"--seconds {fe.affinity_timeout} --reap -j {sep}" for sep in seps)
    n = len(seps)
    for i, sep in enumerate(seps):
        if i < n - 1:
            rules.append(f"-m statistic --mode random --probability {1 / (n - i):.11f} -j {sep}")
        else:
            rules.append(f"-j {sep}")
    return tuple(rules)


class IptState:
    """The desired chains; ``update`` returns the restore text for what changed."""

    def __init__(self, node: NodeContext) -> None:
        self.node = node
        self.contribs: dict[ServiceKey, IptContribution] = {}
        self.owned: dict[ChainId, tuple[str, ...]] = {}
        self.written: dict[ChainId, tuple[str, ...]] = {}   # aggregates as last rendered

    def _aggregate(self, chain: ChainId) -> tuple[str, ...]:
        lines: list[str] = []
        for key in sorted(self.contribs, key=lambda k: (k.namespace, k.name)):
            lines.extend(self.contribs[key].fragments.get(chain, ()))
        if chain == ("nat", SERVICES):
            lines.extend(f"-d {ip}/32 -j {NODEPORTS}" for ip in self.node.node_ips)
        return tuple(lines)

    def update(self, plans: Mapping[ServiceKey, ServicePlan | None]) -> str:
        touched_aggr: set[ChainId] = set()
        before: dict[ChainId, tuple[str, ...] | None] = {}
        after: dict[ChainId, tuple[str, ...]] = {}
        for key, plan in plans.items():
            old = self.contribs.pop(key, None)
            new = contribution(plan, self.node) if plan is not None else None
            old_f = old.fragments if old is not None else {}
            new_f = new.fragments if new is not None else {}
            touched_aggr.update(cid for cid in old_f.keys() | new_f.keys()
                                if old_f.get(cid) != new_f.get(cid))
            if old is not None:
                for cid in old.chains:
                    before.setdefault(cid, self.owned.pop(cid, None))
            if new is not None:
                self.contribs[key] = new
        for c in (self.contribs[k] for k in plans if k in self.contribs):
            for cid, rules in c.chains.items():
                before.setdefault(cid, self.owned.get(cid))
                self.owned[cid] = rules
                after[cid] = rules
        write = {cid: r for cid, r in after.items() if before.get(cid) != r}
        for cid in touched_aggr:
            rules = self._aggregate(cid)
            if self.written.get(cid) != rules:
                write[cid] = self.written[cid] = rules
        delete = [cid for cid, r in before.items() if r is not None and cid not in after]
        return restore_text(write, delete)

    def all_chains(self) -> dict[ChainId, tuple[str, ...]]:
        chains = dict(static_chains(self.node))
        for cid in AGGREGATES:
            chains[cid] = self.written[cid] = self._aggregate(cid)
        chains.update(self.owned)
        return chains

    def full_text(self, existing: set[ChainId] = frozenset()) -> str:  # type: ignore[assignment]
        """Every chain, plus deletion of ``existing`` NETWEFT chains no longer wanted."""
        chains = self.all_chains()
        return restore_text(chains, [cid for cid in existing if cid not in chains])

    def counts(self) -> tuple[int, int]:
        chains = self.all_chains()
        return len(chains), sum(len(r) for r in chains.values())


def restore_text(write: Mapping[ChainId, tuple[str, ...]], delete: list[ChainId]) -> str:
    out: list[str] = []
    for table in TABLES:
        w = sorted(c for t, c in write if t == table)
        d = sorted(c for t, c in delete if t == table)
        if not w and not d:
            continue
        out.append(f"*{table}")
        out.extend(f":{c} - [0:0]" for c in (*w, *d))
        for c in w:
            out.extend(f"-A {c} {r}" for r in write[(table, c)])
        out.extend(f"-X {c}" for c in d)
        out.append("COMMIT")
    return "\n".join(out) + ("\n" if out else "")
