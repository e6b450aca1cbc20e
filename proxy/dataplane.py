"""The two dataplanes behind one small interface: keep the desired state, push deltas, fall back
to a full resync when a transaction fails."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from netweft.backends.nft.applier import NftApplier, NftError, netns_prefix
from netweft.backends.nft.tx import Transaction
from netweft.proxy.affinity import AffinityEntry, carry_elements, parse_affinity_sets
from netweft.proxy.constants import NFT_TABLE
from netweft.proxy.model import ServiceKey
from netweft.proxy.nft_monitor import TableMonitor, in_initial_pid_namespace
from netweft.proxy.nftables import NftState
from netweft.proxy.plan import NodeContext, ServicePlan

if TYPE_CHECKING:  # imported when an IptablesDataplane is made: not paid in nftables mode
    from netweft.proxy.ipt_apply import IptablesApplier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncResult:
    full: bool              # a full load happened (start, or after a failed delta)
    chains: int
    rules: int
    elements: int           # set/map elements (0 for iptables)
    delta_bytes: int        # size of the text sent to the kernel


class Dataplane(Protocol):
    mode: str

    def sync(self, plans: Mapping[ServiceKey, ServicePlan | None], full: bool) -> SyncResult: ...

    def cleanup(self) -> None: ...

    def set_node(self, node: NodeContext) -> None:
        """Render with ``node`` from the next sync on (the caller then asks for a full one)."""

    async def watch(self, on_foreign_change: Callable[[], None]) -> None:
        """Call ``on_foreign_change()`` whenever someone else changes the proxy's rules, until
        cancelled (or return at once when the dataplane cannot notice; the runner's periodic
        full resync heals it then)."""


class NftablesDataplane:
    """nftables: deltas through ``applier``, full loads through ``full_applier``.

    By default deltas go through libnftables in this process (no process start per change) and
    full loads through an ``nft -f -`` child: parsing a whole table of N services makes
    libnftables allocate in the calling process, and that memory stays in its heap afterwards
    (measured at 3,000 services: peak RSS 99 MiB in process vs 69 MiB with the child; issue 12).
    A given ``applier`` is used for both unless ``full_applier`` is given too."""

    mode = "nftables"

    def __init__(self, node: NodeContext, applier: NftApplier | None = None,
                 full_applier: NftApplier | None = None) -> None:
        self.state = NftState(node)
        if applier is None:
            applier = NftApplier()
            full_applier = full_applier or NftApplier(use_library=False)
        self.applier = applier
        self.full_applier = full_applier or applier
        self.apply_seconds = 0.0      # time the last sync spent in the kernel transaction(s)
        self.monitor: TableMonitor | None = None

    def is_own(self, pid: int) -> bool:
        """Whether a commit by ``pid`` was ours (either applier's)."""
        return self.applier.is_own(pid) or self.full_applier.is_own(pid)

    def set_node(self, node: NodeContext) -> None:
        self.state.node = node

    def sync(self, plans: Mapping[ServiceKey, ServicePlan | None], full: bool) -> SyncResult:
        tx = self.state.update_transaction(plans, delta=not full)
        self.apply_seconds = 0.0
        size = 0
        if not full:
            try:
                size = self._apply(tx)
            except NftError as exc:
                log.warning("nft delta failed (%s): full resync", exc)
                full = True
        if full:
            tx = self.state.full_transaction(sort=False)
            timeouts = self.state.affinity_timeouts()
            if timeouts:
                for name, items in carry_elements(timeouts, self._affinity_in_kernel()).items():
                    tx.add_elements(name, items)
            size = self._apply(tx, self.full_applier)
        chains, rules, elements = self.state.counts()
        return SyncResult(full, chains, rules, elements, size)

    def _affinity_in_kernel(self) -> dict[str, tuple[AffinityEntry, ...]]:
        """The clients the kernel's affinity sets remember now (none if there is no table
        yet); a listing nft refuses for another reason is logged and nothing is carried."""
        try:
            return parse_affinity_sets(self.applier.list_json(f"list sets table ip {NFT_TABLE}"))
        except NftError as exc:
            if "No such file or directory" not in str(exc):
                log.warning("reading affinity sets failed (%s): clients pick afresh", exc)
            return {}
        except ValueError as exc:
            log.warning("reading affinity sets failed (%s): clients pick afresh", exc)
            return {}

    def _apply(self, tx: Transaction, applier: NftApplier | None = None) -> int:
        """Apply ``tx`` (through ``applier``, default the delta one); returns the size of its
        text (bytes handed to nft)."""
        start = time.perf_counter()
        try:
            return (applier or self.applier).apply(tx)
        finally:
            self.apply_seconds += time.perf_counter() - start

    def cleanup(self) -> None:
        from netweft.proxy.nftables import delete_text
        self.applier.apply(delete_text())

    async def watch(self, on_foreign_change: Callable[[], None]) -> None:
        """``nft monitor`` in the applier's namespace: any transaction on our table by another
        process (see proxy/nft_monitor.py). Outside the host pid namespace our own commits
        cannot be told from others' (the monitor names host pids): then only the periodic full
        resync heals, said in one warning."""
        if not in_initial_pid_namespace():
            log.warning("not in the host pid namespace: changes to table ip %s by others are "
                        "healed only by the periodic full resync", NFT_TABLE)
            return
        self.monitor = TableMonitor(f"ip {NFT_TABLE}", self.is_own, on_foreign_change,
                                    netns_prefix(self.applier.netns))
        await self.monitor.run()


class IptablesDataplane:
    mode = "iptables"

    def __init__(self, node: NodeContext, applier: IptablesApplier | None = None) -> None:
        from netweft.proxy.ipt_apply import IptablesApplier
        from netweft.proxy.iptables import IptState
        self.state = IptState(node)
        self.applier = applier or IptablesApplier()
        self.apply_seconds = 0.0

    def set_node(self, node: NodeContext) -> None:
        self.state.node = node

    def sync(self, plans: Mapping[ServiceKey, ServicePlan | None], full: bool) -> SyncResult:
        from netweft.proxy.ipt_apply import IptablesError
        delta = self.state.update(plans)
        text = delta
        start = time.perf_counter()
        if not full:
            try:
                self.applier.restore(delta)
            except IptablesError as exc:
                log.warning("iptables delta failed (%s): full resync", exc)
                full = True
        if full:
            existing = self.applier.existing_chains()
            text = self.state.full_text(existing)
            start = time.perf_counter()
            self.applier.restore(text)
            self.applier.ensure_jumps()
        self.apply_seconds = time.perf_counter() - start
        chains, rules = self.state.counts()
        return SyncResult(full, chains, rules, 0, len(text))

    def cleanup(self) -> None:
        self.applier.remove_all()

    async def watch(self, on_foreign_change: Callable[[], None]) -> None:
        """iptables has no change events: the periodic full resync heals foreign edits."""
