"""``netweft leases list|reserve|release``."""

from __future__ import annotations

import json
import time
from ipaddress import IPv4Address, IPv4Network, ip_network

import click
from netweft.daemon.clicontext import fail, settings
from netweft.daemon.etcdrun import with_store
from netweft.ipam.lease import Lease
from netweft.ipam.leases import LeaseStore


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


@leases_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def list_leases(ctx: click.Context, as_json: bool) -> None:
    """List every lease and reservation with its expiry."""
    leases, _ = with_store(settings(ctx), lambda store: store.list(with_expiry=True))
    leases.sort(key=lambda le: (le.subnet is None, le.subnet or IPv4Network("0.0.0.0/0")))
    if as_json:
        click.echo(json.dumps([le.to_dict() for le in leases], indent=2))
        return
    if not leases:
        click.echo("no leases")
        return
    now = time.time()
    rows = [["SUBNET", "PUBLIC-IP", "BACKEND", "VTEP-MAC", "EXPIRES"]]
    for le in leases:
        subnet = " & ".join(str(s) for s in (le.subnet, le.ipv6_subnet) if s is not None)
        rows.append([subnet, str(le.public_ip or le.public_ipv6 or "-"), le.backend_type or "-",
                     le.vtep_mac or "-", _expires(le, now)])
    click.echo(render_table(rows))


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
