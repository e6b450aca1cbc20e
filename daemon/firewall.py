"""Masquerade and forward rules for the pod network, in netweft's own table or chains only.

Rules (Flannel's, in order): packets already marked for masquerade by the service proxy
(0x4000/0x4000) are left to it; pod -> pod stays untouched; traffic from outside the pod network
to this node's subnet is not masqueraded; pod -> anywhere else (except multicast) is
masqueraded; host -> pod network is masqueraded. Forwarding is accepted to and from the pod
network.

nftables (default): table ``ip netweft``, loaded atomically with ``nft -f -``; a check (at once
on an nftables change notice for our table, and periodically) compares the kernel's listing with
the rendered text (written in nft's canonical form) and reloads only on a difference.
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

def render_nft(spec: FirewallSpec) -> str:
    """The table in ``nft list`` canonical form (so the listing can be compared to it)."""
    net, sub = spec.network, spec.subnet
    lines = [f"table ip {NFT_TABLE} {{"]
    if spec.masquerade:
        lines += [
            "\tchain postrouting {",
            "\t\ttype nat hook postrouting priority srcnat; policy accept;",
            f"\t\tmeta mark & {KUBE_PROXY_MASQ_MARK} == {KUBE_PROXY_MASQ_MARK} return",
            f"\t\tip saddr {net} ip daddr {net} return",
            f"\t\tip saddr != {net} ip daddr {sub} return",
            f"\t\tip saddr {net} ip daddr != 224.0.0.0/4 masquerade fully-random",
            f"\t\tip saddr != {net} ip daddr {net} masquerade fully-random",
            "\t}",
        ]
    if spec.forward:
        if spec.masquerade:
            lines.append("")
        lines += [
            "\tchain forward {",
            "\t\ttype filter hook forward priority filter; policy accept;",
            f"\t\tip saddr {net} accept",
            f"\t\tip daddr {net} accept",
            "\t}",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _normalise(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


class NftFirewall:
    kind = "nftables"
    # (NFPROTO family, table) whose change notices mean "check now" (daemon/nftwatch.py).
    watched_tables: tuple[tuple[int, str], ...] = ((2, NFT_TABLE),)

    def __init__(self, runner: Runner | None = None) -> None:
        self.run = runner or Runner()

    def current(self) -> str | None:
        proc = self.run(["nft", "list", "table", "ip", NFT_TABLE], check=False)
        return proc.stdout if proc.returncode == 0 else None

    def ensure(self, spec: FirewallSpec) -> bool:
        """Make the table match ``spec``; True when something was (re)loaded."""
        want = render_nft(spec)
        have = self.current()
        if have is not None and _normalise(have) == _normalise(want):
            return False
        # One transaction: create-if-absent, delete, recreate. Packets see old or new rules.
        script = f"table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n{want}"
        self.run(["nft", "-f", "-"], input=script)
        log.info("loaded nftables table ip %s (%s)", NFT_TABLE,
                 "replaced a changed one" if have is not None else "new")
        return True

    def teardown(self) -> None:
        if self.current() is not None:
            self.run(["nft", "delete", "table", "ip", NFT_TABLE])


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
            f"-A {c} -s {net} ! -d 224.0.0.0/4 {masq} -j MASQUERADE --random-fully",
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
