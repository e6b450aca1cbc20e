"""Stale UDP conntrack entries: UDP has no connection to break, so a client keeps sending to a
backend that is gone (or into the reject verdict of a service that had none) until its entry is
deleted. ``stale_udp_flows`` computes which entries to delete (pure); ``ConntrackCleaner`` runs
``conntrack -D`` for them."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from netweft.backends.nft.applier import netns_prefix
from netweft.proxy.model import Protocol
from netweft.proxy.plan import Frontend, Outcome, ServicePlan


@dataclass(frozen=True, order=True)
class FlowFilter:
    orig_port_dst: int
    orig_dst: str | None = None     # None: a nodePort (any node IP)
    dst_nat: str | None = None      # None: every entry to the frontend

    def args(self) -> list[str]:
        args = ["-p", "udp", "--orig-port-dst", str(self.orig_port_dst)]
        if self.orig_dst:
            args += ["--orig-dst", self.orig_dst]
        if self.dst_nat:
            args += ["--dst-nat", self.dst_nat]
        return args


def _ident(fe: Frontend) -> tuple[object, ...]:
    return (fe.kind, fe.address, fe.port)


def stale_udp_flows(old: ServicePlan | None, new: ServicePlan | None) -> list[FlowFilter]:
    olds = {_ident(f): f for f in (old.frontends if old else ()) if f.protocol is Protocol.UDP}
    news = {_ident(f): f for f in (new.frontends if new else ()) if f.protocol is Protocol.UDP}
    out: set[FlowFilter] = set()
    for ident, fe in olds.items():
        kept = {b.address for b in news[ident].endpoints} if ident in news else set()
        for b in fe.endpoints:
            if b.address not in kept:
                out.add(FlowFilter(fe.port, fe.address, b.address))
    for ident, fe in news.items():
        before = olds.get(ident)
        if fe.outcome is Outcome.BALANCE and (before is None
                                              or before.outcome is not Outcome.BALANCE):
            out.add(FlowFilter(fe.port, fe.address, None))
    return sorted(out)


class ConntrackCleaner:
    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def delete(self, flows: list[FlowFilter]) -> int:
        """Delete matching entries; returns how many ``conntrack -D`` calls failed to run."""
        errors = 0
        for flow in flows:
            proc = subprocess.run([*netns_prefix(self.netns), "conntrack", "-D", *flow.args()],
                                  capture_output=True, text=True, timeout=30)
            # exit 1 with "0 flow entries have been deleted" is the normal "nothing to do"
            if proc.returncode not in (0, 1):
                errors += 1
        return errors
