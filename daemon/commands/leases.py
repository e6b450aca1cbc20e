"""``netweft leases list|reserve|release``."""

from __future__ import annotations

import json
import time
from ipaddress import IPv4Address, IPv4Network, ip_network

import click
from netweft.daemon.clicontext import fail, settings
from netweft.daemon.etcdrun import with_store
from netweft.ipam.config import ConfigError, NetworkConfig
from netweft.ipam.lease import Lease
from netweft.ipam.leasecheck import InvalidLease, check_leases
from netweft.ipam.leases import LeaseScan, LeaseStore


def _expires(lease: Lease, now: float) -> str:
    if lease.reserved:
        return "never (reserved)"
    if lease.expiration is None:
        return "unknown"
    left = int(lease.expiration - now)
    return f"in {left // 3600}h{left % 3600 // 60:02d}m{left % 60:02d}s"


def render_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


@click.group("leases")
def leases_group() -> None:
    """Inspect and manage subnet leases."""


def _listing(scan: LeaseScan, cfg: NetworkConfig | None) -> list[tuple[Lease | None, str | None,
                                                                       str]]:
    """(lease or None, reason or None, key name) rows: every lease checked against the config
    (``ipam/leasecheck.py``; without a config only the malformed ones are invalid)."""
    invalid: dict[str, InvalidLease] = {}
    if cfg is not None:
        invalid = {bad.key_name: bad for bad in check_leases(cfg, scan.leases).invalid}
    rows: list[tuple[Lease | None, str | None, str]] = [
        (le, invalid[le.key_name].reason if le.key_name in invalid else None, le.key_name)
        for le in sorted(scan.leases, key=lambda le: (
            le.subnet is None, le.subnet or IPv4Network("0.0.0.0/0"), le.key_name))]
    rows += [(None, bad.reason, bad.key_name) for bad in scan.malformed]
    return rows


@leases_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def list_leases(ctx: click.Context, as_json: bool) -> None:
    """List every lease and reservation with its expiry; leases no node programs (malformed,
    wrong SubnetLen, outside the network, overlapping) are marked INVALID with the reason."""

    async def read(store: LeaseStore) -> tuple[LeaseScan, NetworkConfig | None]:
        try:
            cfg = await store.get_config()
        except ConfigError:
            cfg = None
        return await store.scan(with_expiry=True), cfg

    scan, cfg = with_store(settings(ctx), read)
    rows = _listing(scan, cfg)
    if as_json:
        out = []
        for le, reason, key in rows:
            item = le.to_dict() if le is not None else {"key": key}
            item["valid"] = reason is None
            if reason is not None:
                item["invalid"] = reason
            out.append(item)
        click.echo(json.dumps(out, indent=2))
        return
    if not rows:
        click.echo("no leases")
        return
    now = time.time()
    table = [["SUBNET", "PUBLIC-IP", "BACKEND", "VTEP-MAC", "NODE", "EXPIRES", "STATUS"]]
    for le, reason, key in rows:
        status = "ok" if reason is None else f"INVALID: {reason}"
        if le is None:
            table.append([key, "-", "-", "-", "-", "-", status])
            continue
        subnet = " & ".join(str(s) for s in (le.subnet, le.ipv6_subnet) if s is not None)
        table.append([subnet, str(le.public_ip or le.public_ipv6 or "-"),
                      le.backend_type or "-", le.vtep_mac or "-",
                      le.node_id[:8] if le.node_id else "-", _expires(le, now), status])
    click.echo(render_table(table))


def _subnet(text: str) -> IPv4Network:
    try:
        net = ip_network(text, strict=True)
    except ValueError as exc:
        fail(f"SUBNET: {text!r} is not a subnet ({exc})")
        raise
    if not isinstance(net, IPv4Network):
        fail("SUBNET: reservations are IPv4 subnets")
    return net  # type: ignore[return-value]


@leases_group.command("reserve")
@click.argument("subnet")
@click.option("--public-ip", required=True, help="The node the subnet is reserved for.")
@click.pass_context
def reserve(ctx: click.Context, subnet: str, public_ip: str) -> None:
    """Reserve SUBNET for the node with --public-ip (never expires)."""
    net = _subnet(subnet)
    try:
        ip = IPv4Address(public_ip)
    except ValueError:
        fail(f"--public-ip: {public_ip!r} is not an IPv4 address")
        return

    async def act(store: LeaseStore) -> Lease:
        return await store.reserve(net, ip, await store.get_config())

    with_store(settings(ctx), act)
    click.echo(f"reserved {net} for {ip}")


@leases_group.command("release")
@click.argument("subnet")
@click.pass_context
def release(ctx: click.Context, subnet: str) -> None:
    """Release the lease or reservation of SUBNET."""
    net = _subnet(subnet)
    if not with_store(settings(ctx), lambda store: store.release(net)):
        fail(f"no lease or reservation for {net}")
    click.echo(f"released {net}")


def register(group: click.Group) -> None:
    group.add_command(leases_group)
