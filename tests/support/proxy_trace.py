"""Packet tracing over the proxy's rules (test support, not shipped): which backends can a new
connection (src, dst, proto, port) reach, is it rejected or dropped, and is it masqueraded?

The nftables tracer walks the table the proxy's typed transactions leave in the in-memory fake
(tests/support/fake_nft.py); the iptables tracer reads the exact ``iptables-restore`` text. Both
follow every random branch (``numgen``/``statistic``), so a test sees the full set of backends a
packet may reach; they understand precisely the rule forms the renderers emit and raise on anything
else. Session-affinity state is given by the caller (``sticky``: client address -> the backend
it was sent to before); empty, a connection is a client's first.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass, field, replace

from netweft.proxy.constants import MASQUERADE_MARK
from netweft.proxy.plan import EndpointTarget

from support.fake_nft import FakeTable


@dataclass(frozen=True)
class Packet:
    src: str
    dst: str
    proto: str            # "tcp" | "udp" | "sctp"
    dport: int
    local: bool = False   # sent by a process on the node (output hook) rather than arriving


@dataclass(frozen=True)
class _State:
    mark: int = 0
    dnat: EndpointTarget | None = None


@dataclass
class Trace:
    """All possible fates of the packet."""
    endpoints: set[EndpointTarget] = field(default_factory=set)
    masquerade: dict[EndpointTarget, bool] = field(default_factory=dict)
    rejected: bool = False
    dropped: bool = False
    passed: bool = False      # not touched: goes on to its original destination

    @property
    def verdicts(self) -> set[str]:
        out = {"dnat"} if self.endpoints else set()
        return out | {n for n, v in (("reject", self.rejected), ("drop", self.dropped),
                                     ("pass", self.passed)) if v}


def _in(addr: str, members: set[str]) -> bool:
    ip = ipaddress.ip_address(addr)
    for m in members:
        if "/" in m:
            if ip in ipaddress.ip_network(m, strict=False):
                return True
        elif m == addr:
            return True
    return False


class UnknownRule(ValueError):
    pass


Result = list[tuple[str | None, _State]]


class _Tracer:
    node_ips: set[str]

    def trace(self, pkt: Packet) -> Trace:
        out = Trace()
        st0 = _State()
        for verdict, st in self.pre_nat(pkt, st0):
            if verdict == "drop":
                out.dropped = True
                continue
            for v2, st2 in self.nat(pkt, st):
                if v2 not in (None, "accept", "dnat"):
                    raise UnknownRule(f"nat verdict {v2}")
                if st2.dnat is None:
                    fv = self.filter(pkt, st2)
                    for v3, _ in fv:
                        if v3 == "reject":
                            out.rejected = True
                        elif v3 == "drop":
                            out.dropped = True
                        else:
                            out.passed = True
                    continue
                out.endpoints.add(st2.dnat)
                masq = self.masquerades(pkt, st2)
                out.masquerade[st2.dnat] = out.masquerade.get(st2.dnat, False) or masq
        return out

    def pre_nat(self, pkt: Packet, st: _State) -> Result:
        raise NotImplementedError

    def nat(self, pkt: Packet, st: _State) -> Result:
        raise NotImplementedError

    def filter(self, pkt: Packet, st: _State) -> Result:
        raise NotImplementedError

    def masquerades(self, pkt: Packet, st: _State) -> bool:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
# nftables

_NUMGEN_MAP = re.compile(r"^meta l4proto (tcp|udp|sctp) dnat ip to (ip daddr \. )?th dport \. "
                         r"numgen random mod (\d+)(?: offset (\d+))? map @(\S+)$")
_NUMGEN_VMAP = re.compile(r"^numgen random mod (\d+) vmap \{ (.*) \}$")
_STATIC_DNAT = re.compile(r"^meta l4proto (\w+) dnat ip to ([\d.]+):(\d+)$")
_MARK = f"meta mark set meta mark | 0x{MASQUERADE_MARK:x}"


class NftTracer(_Tracer):
    """Walks the proxy's table as the in-memory fake holds it after applying the proxy's
    transactions (tests/support/fake_nft.py): chains with their rules, sets and maps with
    elements."""

    def __init__(self, table: FakeTable, sticky: dict[str, EndpointTarget] | None = None) -> None:
        self.sticky = sticky or {}
        self.chains: dict[str, list[str]] = {n: list(c.rules) for n, c in table.chains.items()}
        self.elements: dict[str, dict[str, str | None]] = {
            n: dict(e) for n, e in table.elements.items()}
        self.node_ips = set(self.elements.get("nodeport-ips", {}))

    def _set(self, name: str) -> dict[str, str | None]:
        return self.elements.get(name, {})

    def _key(self, pkt: Packet, with_addr: bool = True) -> str:
        return (f"{pkt.dst} . " if with_addr else "") + f"{pkt.proto} . {pkt.dport}"

    def _verdict(self, v: str | None, st: _State) -> list[tuple[str, str | None, _State]]:
        if v is None:
            return [("next", None, st)]
        if v.startswith("goto "):
            return [("goto", v[5:], st)]
        if v.startswith("jump "):
            return [("jump", v[5:], st)]
        return [("term", v, st)]

    def _eval(self, rule: str, pkt: Packet, st: _State) -> list[tuple[str, str | None, _State]]:
        nxt = [("next", None, st)]
        if rule.startswith("ct state new "):
            return self._eval(rule[len("ct state new "):], pkt, st)
        if rule == "ip daddr . meta l4proto . th dport vmap @service-ips" or \
                rule == "ip daddr . meta l4proto . th dport vmap @no-endpoint-ips":
            table = rule.rsplit("@", 1)[1]
            key = self._key(pkt)
            return self._verdict(self._set(table).get(key), st) if key in self._set(table) \
                else nxt
        m = re.match(r"^ip daddr @nodeport-ips meta l4proto \. th dport vmap @(\S+)$", rule)
        if m:
            key = self._key(pkt, False)
            if pkt.dst in self._set("nodeport-ips") and key in self._set(m.group(1)):
                return self._verdict(self._set(m.group(1))[key], st)
            return nxt
        if rule == "ip saddr != @cluster-cidrs " + _MARK:
            if not _in(pkt.src, set(self._set("cluster-cidrs"))):
                return [("next", None, replace(st, mark=st.mark | MASQUERADE_MARK))]
            return nxt
        if rule == _MARK:
            return [("next", None, replace(st, mark=st.mark | MASQUERADE_MARK))]
        if rule.startswith(_MARK + " "):          # a mark, then the rest of the rule
            return self._eval(rule[len(_MARK) + 1:], pkt,
                              replace(st, mark=st.mark | MASQUERADE_MARK))
        if rule.startswith("ip saddr @cluster-cidrs "):
            if _in(pkt.src, set(self._set("cluster-cidrs"))):
                return self._eval(rule[len("ip saddr @cluster-cidrs "):], pkt, st)
            return nxt
        if rule.startswith("fib saddr type local "):     # sent from an address of the node
            if pkt.local or pkt.src in self.node_ips:
                return self._eval(rule[len("fib saddr type local "):], pkt, st)
            return nxt
        m = _NUMGEN_MAP.match(rule)
        if m:
            out: list[tuple[str, str | None, _State]] = []
            if m.group(1) != pkt.proto:
                return nxt
            table = self._set(m.group(5))
            prefix = f"{pkt.dst} . {pkt.dport}" if m.group(2) else str(pkt.dport)
            offset = int(m.group(4) or 0)
            for i in range(offset, offset + int(m.group(3))):
                v = table.get(f"{prefix} . {i}")
                if v is None:
                    out.append(("next", None, st))      # lookup failed: the rule breaks
                else:
                    addr, _, port = v.partition(" . ")
                    out.append(("term", "dnat", replace(st, dnat=EndpointTarget(addr, int(port)))))
            return out
        m = _NUMGEN_VMAP.match(rule)
        if m:
            out = []
            for item in m.group(2).split(", "):
                _, _, v = item.partition(" : ")
                out += self._verdict(v, st)
            return out
        m = re.match(r"^ip saddr @(aff-\S+) goto (\S+)$", rule)
        if m:       # the client is in the endpoint's set if it was sent to that endpoint before
            if self.sticky.get(pkt.src) == self._chain_target(m.group(2)):
                return [("goto", m.group(2), st)]
            return nxt
        if rule.startswith("update @") or rule == "masquerade fully-random":
            return nxt if rule.startswith("update") else [("term", "masquerade", st)]
        m = _STATIC_DNAT.match(rule)
        if m:
            if m.group(1) != pkt.proto:
                return nxt
            return [("term", "dnat", replace(st, dnat=EndpointTarget(m.group(2), int(m.group(3)))))]
        if rule.startswith("goto ") or rule.startswith("jump "):
            return self._verdict(rule, st)
        if rule == "meta l4proto tcp reject with tcp reset":
            return [("term", "reject", st)] if pkt.proto == "tcp" else nxt
        if rule in ("reject", "drop", "accept"):
            return [("term", rule, st)]
        if rule == ("ip daddr . meta l4proto . th dport @firewall-ips ip daddr . meta l4proto "
                    ". th dport . ip saddr != @firewall-allow drop"):
            key = self._key(pkt)
            if key not in self._set("firewall-ips"):
                return nxt
            allowed = {k.rsplit(" . ", 1)[1] for k in self._set("firewall-allow")
                       if k.rsplit(" . ", 1)[0] == key}
            return nxt if _in(pkt.src, allowed) else [("term", "drop", st)]
        if rule == "ct status dnat ip saddr . ip daddr @hairpin masquerade fully-random":
            if st.dnat and f"{pkt.src} . {st.dnat.address}" in self._set("hairpin"):
                return [("term", "masquerade", st)]
            return nxt
        if rule == (f"meta mark & 0x{MASQUERADE_MARK:x} != 0 meta mark set meta mark ^ "
                    f"0x{MASQUERADE_MARK:x} masquerade fully-random"):
            if st.mark & MASQUERADE_MARK:
                return [("term", "masquerade", replace(st, mark=st.mark ^ MASQUERADE_MARK))]
            return nxt
        if rule == f"meta mark & 0x{MASQUERADE_MARK:x} == 0 return":
            return [("return", None, st)] if not st.mark & MASQUERADE_MARK else nxt
        if rule == f"meta mark set meta mark ^ 0x{MASQUERADE_MARK:x}":
            return [("next", None, replace(st, mark=st.mark ^ MASQUERADE_MARK))]
        raise UnknownRule(rule)

    def _chain_target(self, chain: str) -> EndpointTarget | None:
        for rule in self.chains.get(chain, []):
            m = _STATIC_DNAT.match(rule)
            if m:
                return EndpointTarget(m.group(2), int(m.group(3)))
        return None

    def run(self, chain: str, pkt: Packet, st: _State, start: int = 0) -> Result:
        rules = self.chains[chain]
        if start >= len(rules):
            return [(None, st)]
        out: Result = []
        for kind, arg, st2 in self._eval(rules[start], pkt, st):
            if kind == "next":
                out += self.run(chain, pkt, st2, start + 1)
            elif kind == "term":
                out.append((arg, st2))
            elif kind == "return":
                out.append((None, st2))
            elif kind == "goto":
                out += self.run(str(arg), pkt, st2)
            elif kind == "jump":
                for v, s in self.run(str(arg), pkt, st2):
                    out += self.run(chain, pkt, s, start + 1) if v is None else [(v, s)]
        return out

    def pre_nat(self, pkt: Packet, st: _State) -> Result:
        return [(None, st)] if pkt.local else self.run("filter-prerouting", pkt, st)

    def nat(self, pkt: Packet, st: _State) -> Result:
        return self.run("nat-output" if pkt.local else "nat-prerouting", pkt, st)

    def filter(self, pkt: Packet, st: _State) -> Result:
        if pkt.local:
            chain = "filter-output"
        else:
            chain = "filter-input" if pkt.dst in self.node_ips else "filter-forward"
        return self.run(chain, pkt, st)

    def masquerades(self, pkt: Packet, st: _State) -> bool:
        return any(v == "masquerade" for v, _ in self.run("nat-postrouting", pkt, st))


# --------------------------------------------------------------------------------------------
# iptables

class IptablesTracer(_Tracer):
    def __init__(self, text: str, sticky: dict[str, EndpointTarget] | None = None) -> None:
        self.sticky = sticky or {}
        self.chains: dict[tuple[str, str], list[list[str]]] = {}
        table = ""
        for line in text.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":"):
                self.chains.setdefault((table, line[1:].split()[0]), [])
            elif line.startswith("-A "):
                args = shlex.split(line)
                self.chains.setdefault((table, args[1]), []).append(args[2:])
        services = self.chains.get(("nat", "NETWEFT-SERVICES"), [])
        self.node_ips = {r[1].split("/")[0] for r in services
                         if r[0] == "-d" and r[-1] == "NETWEFT-NODEPORTS"}

    def _matches(self, args: list[str], pkt: Packet, st: _State) -> tuple[list[bool], list[str]]:
        """Whether the matches hold (a list: ``statistic`` matches both ways) and the target."""
        outcomes = [True]
        i = 0
        neg = False
        while i < len(args):
            a = args[i]
            if a == "!":
                neg = True
                i += 1
                continue
            if a == "-j":
                return outcomes, args[i + 1:]
            if a in ("-d", "-s"):
                addr = pkt.dst if a == "-d" else pkt.src
                ok = _in(addr, {args[i + 1]})
                outcomes = [o and (ok != neg) for o in outcomes]
                i += 2
            elif a == "-p":
                outcomes = [o and (args[i + 1] == pkt.proto) for o in outcomes]
                i += 2
            elif a == "--dport":
                outcomes = [o and int(args[i + 1]) == pkt.dport for o in outcomes]
                i += 2
            elif a == "-m":
                mod = args[i + 1]
                i += 2
                if mod == "statistic":
                    outcomes = [o and x for o in outcomes for x in (True, False)]
                    i += 4                                  # --mode random --probability p
                elif mod == "recent":
                    rest = args[i:args.index("-j")] if "-j" in args[i:] else args[i:]
                    if "--rcheck" in rest:   # recent list <SEP>: clients sent to that SEP
                        hit = self.sticky.get(pkt.src) == self._sep_target(
                            rest[rest.index("--name") + 1])
                        outcomes = [o and hit for o in outcomes]
                    i += len(rest)
                elif mod == "mark":
                    if args[i] == "!":
                        neg = True
                        i += 1
                    want = int(args[i + 1].split("/")[0], 16)
                    ok = bool(st.mark & want)
                    outcomes = [o and (ok != neg) for o in outcomes]
                    i += 2
                elif mod == "comment":
                    i += 2
                elif mod == "addrtype":                     # --src-type LOCAL: a node address
                    ok = pkt.local or pkt.src in self.node_ips
                    outcomes = [o and ok for o in outcomes]
                    i += 2
                elif mod == "conntrack":
                    i += 2                                  # --ctstate NEW: traced packets are new
                elif mod in ("tcp", "udp", "sctp"):
                    pass
                else:
                    raise UnknownRule(" ".join(args))
            else:
                raise UnknownRule(" ".join(args))
            neg = False
        return outcomes, []

    def _sep_target(self, chain: str) -> EndpointTarget | None:
        for rule in self.chains.get(("nat", chain), []):
            if "DNAT" in rule:
                addr, _, port = rule[rule.index("--to-destination") + 1].partition(":")
                return EndpointTarget(addr, int(port))
        return None

    def _target(self, table: str, target: list[str], st: _State) -> tuple[str, object, _State]:
        if not target:
            return "next", None, st                         # e.g. ``-m recent --set``
        name = target[0]
        if name == "MARK":
            bits = int(target[2], 16)
            mark = st.mark | bits if target[1] == "--or-mark" else st.mark ^ bits
            return "next", None, replace(st, mark=mark)
        if name == "DNAT":
            addr, _, port = target[2].partition(":")
            return "term", "dnat", replace(st, dnat=EndpointTarget(addr, int(port)))
        if name in ("REJECT", "DROP", "ACCEPT"):
            return "term", name.lower(), st
        if name == "MASQUERADE":
            return "term", "masquerade", st
        if name == "RETURN":
            return "return", None, st
        if (table, name) in self.chains:
            return "jump", name, st
        raise UnknownRule(" ".join(target))

    def run(self, table: str, chain: str, pkt: Packet, st: _State, start: int = 0) -> Result:
        rules = self.chains.get((table, chain), [])
        if start >= len(rules):
            return [(None, st)]
        out: Result = []
        outcomes, target = self._matches(rules[start], pkt, st)
        for ok in outcomes:
            if not ok:
                out += self.run(table, chain, pkt, st, start + 1)
                continue
            kind, arg, st2 = self._target(table, target, st)
            if kind == "next":
                out += self.run(table, chain, pkt, st2, start + 1)
            elif kind == "term":
                out.append((str(arg), st2))
            elif kind == "return":
                out.append((None, st2))
            else:
                for v, s in self.run(table, str(arg), pkt, st2):
                    out += self.run(table, chain, pkt, s, start + 1) if v is None else [(v, s)]
        return out

    def pre_nat(self, pkt: Packet, st: _State) -> Result:
        return [(None, st)] if pkt.local else self.run("mangle", "NETWEFT-FIREWALL", pkt, st)

    def nat(self, pkt: Packet, st: _State) -> Result:
        return self.run("nat", "NETWEFT-SERVICES", pkt, st)

    def filter(self, pkt: Packet, st: _State) -> Result:
        return self.run("filter", "NETWEFT-FILTER", pkt, st)

    def masquerades(self, pkt: Packet, st: _State) -> bool:
        return any(v == "masquerade" for v, _ in self.run("nat", "NETWEFT-POSTROUTING", pkt, st))
