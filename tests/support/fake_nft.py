"""An in-memory nftables for pure tests: applies typed transactions (netweft.backends.nft.tx: the
proxy's, the daemon firewall's, the CNI masquerade's) to tables of chains, sets and elements,
all or nothing, and refuses what the kernel refuses for the operations they use (a missing
table, chain, set or element; a set or chain deleted while it still exists in a rule is not
checked). Like knftables' ``Fake``.

It stands in for ``NftApplier`` (``apply``, ``apply_all``, ``list_json``, ``is_own``,
``netns``), so a real ``NftablesDataplane`` can run on it; the packet tracer
(tests/support/proxy_trace.py) walks its tables.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from netweft.backends.nft.applier import NftError
from netweft.backends.nft.tx import (
    AddChain,
    AddElements,
    AddRules,
    AddSet,
    AddTable,
    Chain,
    DeleteElements,
    DeleteObject,
    DeleteTable,
    FlushChain,
    Hook,
    NftSet,
    ReplaceTable,
    Transaction,
    table_text,
)


@dataclass
class FakeChain:
    rules: list[str] = field(default_factory=list)
    hook: Hook | None = None


@dataclass
class FakeTable:
    sets: dict[str, NftSet] = field(default_factory=dict)
    elements: dict[str, dict[str, str | None]] = field(default_factory=dict)  # set -> key -> value
    chains: dict[str, FakeChain] = field(default_factory=dict)


class FakeNft:
    """Tables by ``"<family> <name>"``; ``transactions`` counts the applied ones."""

    netns = None

    def __init__(self) -> None:
        self.tables: dict[str, FakeTable] = {}
        self.transactions = 0

    def apply(self, change: Transaction | str) -> int:
        if isinstance(change, str):
            raise TypeError("the fake applies typed transactions, not nft text")
        return self.apply_all([change])

    def apply_all(self, changes: list[Transaction]) -> int:
        """Several transactions as one: all of them or none (as one ``nft -f`` run)."""
        tables = copy.deepcopy(self.tables)
        for change in changes:
            for op in change.ops:
                _apply(tables, change.target, op)
        self.tables = tables                         # all or nothing
        self.transactions += 1
        return sum(len(change.render()) for change in changes)

    def table(self, target: str) -> FakeTable:
        return self.tables[target]

    def list_json(self, command: str) -> dict[str, Any]:
        """``list sets table <family> <name>``: the sets, their elements without timeouts."""
        words = command.split()
        if words[:3] != ["list", "sets", "table"] or len(words) != 5:
            raise NftError(f"the fake does not list {command!r}")
        target = f"{words[3]} {words[4]}"
        if target not in self.tables:
            raise NftError("Error: No such file or directory")
        t = self.tables[target]
        return {"nftables": [{"set": {"name": name, "elem": list(t.elements[name])}}
                             for name, s in t.sets.items() if not s.is_map]}

    def run(self, command: str) -> str:
        """``list table <family> <name>``: its set declarations and chains as ``nft list``
        prints them (set elements are not listed). NftError when the table does not exist."""
        words = command.split()
        if words[:2] != ["list", "table"] or len(words) != 4:
            raise NftError(f"the fake does not run {command!r}")
        target = f"{words[2]} {words[3]}"
        if target not in self.tables:
            raise NftError("Error: No such file or directory")
        t = self.tables[target]
        chains = [Chain(name, tuple(c.rules), c.hook) for name, c in t.chains.items()]
        return table_text(words[2], words[3], list(t.sets.values()), chains) + "\n"

    def is_own(self, pid: int) -> bool:
        return True


def _apply(tables: dict[str, FakeTable], target: str, op: object) -> None:
    if isinstance(op, ReplaceTable):
        t = tables[target] = FakeTable()
        for s in op.sets:
            t.sets[s.name], t.elements[s.name] = s, {}
        for c in op.chains:
            t.chains[c.name] = FakeChain(list(c.rules), c.hook)
        return
    if isinstance(op, DeleteTable):
        tables.pop(target, None)
        return
    if isinstance(op, AddTable):
        tables.setdefault(target, FakeTable())
        return
    if target not in tables:
        raise NftError(f"Error: No such file or directory (table {target})")
    t = tables[target]
    if isinstance(op, AddSet):
        if op.set.name not in t.sets:
            t.sets[op.set.name], t.elements[op.set.name] = op.set, {}
    elif isinstance(op, AddChain):
        t.chains.setdefault(op.chain.name, FakeChain(hook=op.chain.hook))
    elif isinstance(op, (AddRules, FlushChain)):
        if op.chain not in t.chains:
            raise NftError(f"Error: No such file or directory (chain {op.chain})")
        if isinstance(op, FlushChain):
            t.chains[op.chain].rules.clear()
        else:
            t.chains[op.chain].rules.extend(op.rules)
    elif isinstance(op, DeleteObject):
        where: dict[str, Any] = t.chains if op.kind == "chain" else t.sets
        if op.name not in where:
            raise NftError(f"Error: No such file or directory ({op.kind} {op.name})")
        del where[op.name]
        if op.kind != "chain":
            del t.elements[op.name]
    elif isinstance(op, AddElements):
        if op.set not in t.sets:
            raise NftError(f"Error: No such file or directory (set {op.set})")
        for e in op.elements:
            t.elements[op.set][e.key] = e.value
    elif isinstance(op, DeleteElements):
        if op.set not in t.sets:
            raise NftError(f"Error: No such file or directory (set {op.set})")
        for key in op.keys:
            if t.elements[op.set].pop(key, _MISSING) is _MISSING:
                raise NftError(f"Error: Could not process rule: No such file or directory "
                               f"(element {key} of {op.set})")
    else:
        raise TypeError(f"unknown operation {op!r}")


_MISSING = object()
