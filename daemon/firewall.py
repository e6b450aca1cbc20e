"""Masquerade and forward rules for the pod network, in netweft's own table or chains only.

Rules (Flannel's, in order): packets already marked for masquerade by the service proxy
(0x4000/0x4000) are left to it; pod -> pod stays untouched; traffic from outside the pod network
to this node's subnet is not masqueraded; pod -> anywhere else (except multicast) is
masqueraded; host -> pod network is masqueraded. Forwarding is accepted to and from the pod
network.

nftables (default): table ``ip netweft``, typed chains (``netweft.backends.nft.tx``) loaded
atomically through the one applier (``netweft.backends.nft.applier``, ``nft -f -``); a check (at
once on an nftables change notice for our table, and periodically) compares the kernel's listing
with the rendered text (written in nft's canonical form) and reloads only on a difference.
iptables: chains ``NETWEFT-POSTRTG`` (nat) and ``NETWEFT-FWD`` (filter) filled by
``iptables-restore --noflush`` (which only flushes the chains it declares), plus one jump rule
each from POSTROUTING / FORWARD. Nothing else is ever touched.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network

from netweft.backends.nft.applier import NftApplier, NftError
from netweft.backends.nft.tx import Chain, DeleteTable, Hook, ReplaceTable, Transaction, table_text

log = logging.getLogger("netweft.firewall")

KUBE_PROXY_MASQ_MARK = "0x00004000"
NFT_TABLE = "netweft"
IPT_NAT_CHAIN = "NETWEFT-POSTRTG"
IPT_FWD_CHAIN = "NETWEFT-FWD"


class FirewallError(Exception):
    """nft / iptables refused our rules (the message carries their one-line error)."""


@dataclass(frozen=True)
class FirewallSpec:
    network: IPv4Network      # the whole pod network (cluster CIDR)
    subnet: IPv4Network       # this node's subnet
    masquerade: bool = True   # --ip-masq
    forward: bool = True


class Runner:
    """Runs a command, inside ``netns`` when given (tests drive a node namespace from outside)."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def __call__(self, cmd: Sequence[str], input: str | None = None,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        full = list(cmd) if self.netns is None else ["ip", "netns", "exec", self.netns, *cmd]
        proc = subprocess.run(full, input=input, capture_output=True, text=True, timeout=30)
        if check and proc.returncode != 0:
            msg = (proc.stderr or proc.stdout).strip().splitlines()
            raise FirewallError(f"{cmd[0]} failed: {msg[0] if msg else proc.returncode}")
        return proc


# --- nftables ---------------------------------------------------------------------------------

NFT_FAMILY = "ip"
NFT_POSTROUTING_CHAIN = "postrouting"
NFT_FORWARD_CHAIN = "forward"
MULTICAST = "224.0.0.0/4"


def nft_chains(spec: FirewallSpec) -> tuple[Chain, ...]:
    """Our table's chains for ``spec`` (pure): Flannel's masquerade rules in order at
    postrouting (srcnat), the forward accepts (filter)."""
    net, sub = spec.network, spec.subnet
    chains: list[Chain] = []
    if spec.masquerade:
        chains.append(Chain(NFT_POSTROUTING_CHAIN, (
            f"meta mark & {KUBE_PROXY_MASQ_MARK} == {KUBE_PROXY_MASQ_MARK} return",
            f"ip saddr {net} ip daddr {net} return",
            f"ip saddr != {net} ip daddr {sub} return",
            f"ip saddr {net} ip daddr != {MULTICAST} masquerade fully-random",
            f"ip saddr != {net} ip daddr {net} masquerade fully-random",
        ), Hook("nat", "postrouting", "srcnat")))
    if spec.forward:
        chains.append(Chain(NFT_FORWARD_CHAIN, (f"ip saddr {net} accept", f"ip daddr {net} accept"),
                            Hook("filter", "forward", "filter")))
    return tuple(chains)


def render_nft(spec: FirewallSpec) -> str:
    """The table in ``nft list`` canonical form (so the listing can be compared to it)."""
    return table_text(NFT_FAMILY, NFT_TABLE, (), nft_chains(spec)) + "\n"


def _normalise(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


class NftFirewall:
    """Our table through the one nftables applier (``netweft.backends.nft``, ``nft -f -`` in the
    runner's namespace). Raises FirewallError when nft refuses a change."""

    kind = "nftables"
    # (NFPROTO family, table) whose change notices mean "check now" (daemon/nftwatch.py).
    watched_tables: tuple[tuple[int, str], ...] = ((2, NFT_TABLE),)

    def __init__(self, runner: Runner | None = None, nft: NftApplier | None = None) -> None:
        self.run = runner or Runner()
        self.nft = nft or NftApplier(self.run.netns, use_library=False)

    def current(self) -> str | None:
        """``nft list table ip netweft`` (None: no such table)."""
        try:
            return self.nft.run(f"list table {NFT_FAMILY} {NFT_TABLE}")
        except NftError:
            return None

    def _apply(self, tx: Transaction) -> None:
        try:
            self.nft.apply(tx)
        except NftError as exc:
            raise FirewallError(f"nft failed: {exc}") from None

    def ensure(self, spec: FirewallSpec) -> bool:
        """Make the table match ``spec``; True when something was (re)loaded."""
        want = render_nft(spec)
        have = self.current()
        if have is not None and _normalise(have) == _normalise(want):
            return False
        # One transaction: create-if-absent, delete, recreate. Packets see old or new rules.
        self._apply(Transaction(NFT_FAMILY, NFT_TABLE, [ReplaceTable((), nft_chains(spec))]))
        log.info("loaded nftables table ip %s (%s)", NFT_TABLE,
                 "replaced a changed one" if have is not None else "new")
        return True

    def teardown(self) -> None:
        if self.current() is not None:
            self._apply(Transaction(NFT_FAMILY, NFT_TABLE, [DeleteTable()]))


# --- iptables ---------------------------------------------------------------------------------

def iptables_rules(spec: FirewallSpec) -> dict[str, list[str]]:
    """Our chains' rules per table, exactly as ``iptables-save`` prints them."""
    net, sub = spec.network, spec.subnet
    masq = '-m comment --comment "netweft masq"'
    fwd = '-m comment --comment "netweft forward"'
    out: dict[str, list[str]] = {}
    if spec.masquerade:
        c = IPT_NAT_CHAIN
        out["nat"] = [
            f"-A {c} -m mark --mark 0x4000/0x4000 {masq} -j RETURN",
            f"-A {c} -s {net} -d {net} {masq} -j RETURN",
            f"-A {c} ! -s {net} -d {sub} {masq} -j RETURN",
            f"-A {c} -s {net} ! -d {MULTICAST} {masq} -j MASQUERADE --random-fully",
            f"-A {c} ! -s {net} -d {net} {masq} -j MASQUERADE --random-fully",
        ]
    if spec.forward:
        c = IPT_FWD_CHAIN
        out["filter"] = [f"-A {c} -s {net} {fwd} -j ACCEPT", f"-A {c} -d {net} {fwd} -j ACCEPT"]
    return out


JUMPS = {"nat": ("POSTROUTING", IPT_NAT_CHAIN, "netweft masq"),
         "filter": ("FORWARD", IPT_FWD_CHAIN, "netweft forward")}


class IptablesFirewall:
    kind = "iptables"
    watched_tables: tuple[tuple[int, str], ...] = ((2, "nat"), (2, "filter"))  # iptables-nft

    def __init__(self, runner: Runner | None = None) -> None:
        self.run = runner or Runner()

    def _saved(self, table: str) -> list[str]:
        proc = self.run(["iptables-save", "-t", table], check=False)
        return proc.stdout.splitlines() if proc.returncode == 0 else []

    def _jump(self, table: str) -> list[str]:
        parent, chain, comment = JUMPS[table]
        return [parent, "-m", "comment", "--comment", comment, "-j", chain]

    def ensure(self, spec: FirewallSpec) -> bool:
        changed = False
        want = iptables_rules(spec)
        for table in ("nat", "filter"):
            _parent, chain, _ = JUMPS[table]
            saved = self._saved(table)
            have_rules = [line for line in saved if line.startswith(f"-A {chain} ")]
            has_chain = any(line.startswith(f":{chain} ") for line in saved)
            rules = want.get(table)
            if rules is None:  # e.g. --no-ip-masq: our chain for this table must not exist
                if has_chain:
                    self._remove(table)
                    changed = True
                continue
            if not has_chain or have_rules != rules:
                body = "\n".join([f"*{table}", f":{chain} - [0:0]", *rules, "COMMIT", ""])
                self.run(["iptables-restore", "-w", "5", "--noflush"], input=body)
                changed = True
            jump = self._jump(table)
            if self.run(["iptables", "-w", "5", "-t", table, "-C", *jump], check=False).returncode:
                self.run(["iptables", "-w", "5", "-t", table, "-I", jump[0], "1", *jump[1:]])
                changed = True
        if changed:
            log.info("loaded iptables chains %s, %s", IPT_NAT_CHAIN, IPT_FWD_CHAIN)
        return changed

    def _remove(self, table: str) -> None:
        _parent, chain, _ = JUMPS[table]
        jump = self._jump(table)
        while self.run(["iptables", "-w", "5", "-t", table, "-C", *jump],
                       check=False).returncode == 0:
            self.run(["iptables", "-w", "5", "-t", table, "-D", *jump])
        if any(line.startswith(f":{chain} ") for line in self._saved(table)):
            self.run(["iptables", "-w", "5", "-t", table, "-F", chain])
            self.run(["iptables", "-w", "5", "-t", table, "-X", chain])

    def teardown(self) -> None:
        for table in ("nat", "filter"):
            self._remove(table)


Firewall = NftFirewall | IptablesFirewall


def make_firewall(kind: str, runner: Runner | None = None) -> Firewall:
    if kind == "nftables":
        return NftFirewall(runner)
    if kind == "iptables":
        return IptablesFirewall(runner)
    raise ValueError(f"--firewall: {kind!r} is not nftables or iptables")
