"""Typed nftables objects and one transaction that renders them (issue 10, item 4).

The proxy, the daemon's firewall and the CNI masquerade describe what they want as small
objects -- a base chain's ``Hook``, a ``Chain`` with its rules, an ``NftSet`` (set or map) with
its type, flags and timeout, ``Element`` s with key, value and a readable comment -- and collect
the changes in a ``Transaction``: create or replace the table, add/flush/delete chains and sets,
add/delete elements. ``Transaction.render()`` is the only place that turns them into ``nft -f``
text; tests apply the same transaction to an in-memory fake instead
(tests/support/fake_nft.py), in the manner of kube-proxy's knftables ``Transaction`` and ``Fake``.

Rules stay nft expressions (strings): they are few and fixed (see proxy/nftables.py,
daemon/firewall.py, cni/masq.py); what
grows with the number of services is elements, and those are typed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

ELEMENTS_PER_STATEMENT = 200   # statements of a few hundred elements load measurably faster


@dataclass(frozen=True)
class Hook:
    """What makes a chain a base chain: ``type nat hook prerouting priority dstnat``.
    ``priority`` is an nft priority expression (``dstnat``, ``-100``, ``srcnat - 10``)."""
    type: str
    hook: str
    priority: str
    policy: str = "accept"

    def __str__(self) -> str:
        return f"type {self.type} hook {self.hook} priority {self.priority}; policy {self.policy};"


@dataclass(frozen=True)
class Chain:
    """A chain and its rules (nft rule expressions), in order; ``hook`` for base chains."""
    name: str
    rules: tuple[str, ...] = ()
    hook: Hook | None = None

    kind = "chain"


@dataclass(frozen=True)
class NftSet:
    """A named set, or a map when ``is_map``. ``spec`` is the type clause without the
    semicolon (``type ipv4_addr . inet_proto . inet_service : verdict``, ``typeof ...``);
    ``timeout`` in seconds (dynamic sets such as the affinity sets)."""
    name: str
    spec: str
    is_map: bool = False
    flags: tuple[str, ...] = ()
    timeout: int | None = None

    @property
    def kind(self) -> str:
        return "map" if self.is_map else "set"

    def declaration(self) -> str:
        parts = [f"{self.spec};"]
        if self.flags:
            parts.append(f"flags {','.join(self.flags)};")
        if self.timeout is not None:
            parts.append(f"timeout {self.timeout}s;")
        return " ".join(parts)


class Element(NamedTuple):
    """One set element (``value`` None) or map element; ``comment`` says whose it is
    (``namespace/service:port``, like kube-proxy's element comments); ``timeout`` and
    ``expires`` in seconds for dynamic sets."""
    key: str
    value: str | None = None
    comment: str | None = None
    timeout: int | None = None
    expires: int | None = None

    def text(self) -> str:
        out = self.key
        if self.timeout is not None:
            out += f" timeout {self.timeout}s"
        if self.expires is not None:
            out += f" expires {self.expires}s"
        if self.comment:
            out += f' comment "{self.comment}"'
        return out if self.value is None else f"{out} : {self.value}"


# -- operations ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReplaceTable:
    """Delete the table if it exists and create it anew with these sets and chains, atomically
    (``add table; delete table; table { ... }``)."""
    sets: tuple[NftSet, ...]
    chains: tuple[Chain, ...]


@dataclass(frozen=True)
class AddTable:
    """Create the table when it does not exist (``add table``); keeps an existing one as is."""


@dataclass(frozen=True)
class DeleteTable:
    """Remove the table; harmless when it does not exist."""


@dataclass(frozen=True)
class AddSet:
    set: NftSet


@dataclass(frozen=True)
class AddChain:
    """Create an empty chain, a base chain when it has a ``hook`` (its rules follow in
    ``AddRules``, after every chain exists); keeps an existing chain's rules."""
    chain: Chain


@dataclass(frozen=True)
class AddRules:
    chain: str
    rules: tuple[str, ...]


@dataclass(frozen=True)
class FlushChain:
    chain: str


@dataclass(frozen=True)
class DeleteObject:
    """Delete a chain, set or map by name (``kind``: "chain" | "set" | "map")."""
    kind: str
    name: str


@dataclass(frozen=True)
class AddElements:
    set: str
    elements: tuple[Element, ...]


@dataclass(frozen=True)
class DeleteElements:
    set: str
    keys: tuple[str, ...]


Op = (ReplaceTable | AddTable | DeleteTable | AddSet | AddChain | AddRules | FlushChain
      | DeleteObject | AddElements | DeleteElements)


@dataclass
class Transaction:
    """Changes to one table (``family``, ``table``: ``ip``, ``netweft-proxy``), applied
    atomically in order: nft checks the whole transaction and commits all or nothing."""
    family: str
    table: str
    ops: list[Op] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"{self.family} {self.table}"

    def __bool__(self) -> bool:
        return bool(self.ops)

    def add(self, op: Op) -> Transaction:
        self.ops.append(op)
        return self

    def add_elements(self, name: str, elements: Sequence[Element]) -> None:
        if elements:
            self.ops.append(AddElements(name, tuple(elements)))

    def delete_elements(self, name: str, keys: Iterable[str]) -> None:
        keys = tuple(keys)
        if keys:
            self.ops.append(DeleteElements(name, keys))

    def render(self) -> str:
        """The ``nft -f`` text of the transaction (empty when there is nothing to do)."""
        out: list[str] = []
        t = self.target
        for op in self.ops:
            if isinstance(op, AddElements):
                # the hot path of a full load (tens of thousands of elements): plain elements
                # without the method call
                texts = [(k if v is None else f"{k} : {v}") if c is None and ti is None
                         and ex is None else Element(k, v, c, ti, ex).text()
                         for k, v, c, ti, ex in op.elements]
                for i in range(0, len(texts), ELEMENTS_PER_STATEMENT):
                    chunk = ", ".join(texts[i:i + ELEMENTS_PER_STATEMENT])
                    out.append(f"add element {t} {op.set} {{ {chunk} }}")
            elif isinstance(op, DeleteElements):
                out.append(f"delete element {t} {op.set} {{ {', '.join(op.keys)} }}")
            elif isinstance(op, AddRules):
                out.extend(f"add rule {t} {op.chain} {r}" for r in op.rules)
            elif isinstance(op, AddChain):
                hook = op.chain.hook
                out.append(f"add chain {t} {op.chain.name}" + (f" {{ {hook} }}" if hook else ""))
            elif isinstance(op, AddSet):
                out.append(f"add {op.set.kind} {t} {op.set.name} {{ {op.set.declaration()} }}")
            elif isinstance(op, FlushChain):
                out.append(f"flush chain {t} {op.chain}")
            elif isinstance(op, DeleteObject):
                out.append(f"delete {op.kind} {t} {op.name}")
            elif isinstance(op, AddTable):
                out.append(f"add table {t}")
            elif isinstance(op, DeleteTable):
                out += [f"add table {t}", f"delete table {t}"]
            elif isinstance(op, ReplaceTable):
                out += [f"add table {t}", f"delete table {t}",
                        table_text(self.family, self.table, op.sets, op.chains)]
        return "\n".join(out) + ("\n" if out else "")


def table_text(family: str, table: str, sets: Sequence[NftSet], chains: Sequence[Chain]) -> str:
    """A whole table as one ``table <family> <name> { ... }`` block, tab-indented, one set,
    chain, hook line or rule per line (no trailing newline). For a table of chains only this is
    the form ``nft list table`` prints (blank lines aside), so a listing can be compared to it
    line by line (daemon/firewall.py does)."""
    out = [f"table {family} {table} {{"]
    out += [f"\t{s.kind} {s.name} {{ {s.declaration()} }}" for s in sets]
    for c in chains:
        out.append(f"\tchain {c.name} {{")
        if c.hook is not None:
            out.append(f"\t\t{c.hook}")
        out.extend(f"\t\t{r}" for r in c.rules)
        out.append("\t}")
    out.append("}")
    return "\n".join(out)
