"""``netweft config show|set``: the network config at ``<prefix>/config``."""

from __future__ import annotations

import json
from typing import Any

import click
from netweft.daemon.clicontext import fail, settings
from netweft.daemon.etcdrun import with_store
from netweft.ipam.config import ConfigError, NetworkConfig, from_dict


@click.group("config")
def config_group() -> None:
    """Show or set the network config (Flannel's JSON)."""


@config_group.command("show")
@click.pass_context
def show(ctx: click.Context) -> None:
    """Print the network config with every default filled in."""
    s = settings(ctx)
    cfg = with_store(s, lambda store: store.get_config())
    if cfg is None:
        fail(f"no network config at {s.prefix}/config (set one with `netweft config set`)")
    assert cfg is not None
    click.echo(cfg.to_json(indent=2))


@config_group.command("set")
@click.option("-f", "--file", "path", type=click.Path(dir_okay=False, allow_dash=True),
              help="A Flannel network config JSON file ('-' for stdin).")
@click.option("--network", help="IPv4 pod network, e.g. 10.244.0.0/16.")
@click.option("--subnet-len", type=int, help="Prefix length of each node's subnet.")
@click.option("--subnet-min", help="First subnet to lease.")
@click.option("--subnet-max", help="Last subnet to lease.")
@click.option("--ipv6-network", help="IPv6 pod network (enables IPv6).")
@click.option("--ipv6-subnet-len", type=int)
@click.option("--backend", type=click.Choice(["vxlan", "host-gw", "wireguard"]),
              help="Backend type.")
@click.option("--vni", type=int, help="VXLAN network identifier.")
@click.option("--port", type=int, help="VXLAN UDP port.")
@click.option("--direct-routing/--no-direct-routing", default=None,
              help="vxlan: plain routes to peers on the same L2 segment.")
@click.option("--mtu", type=int, help="Override the backend MTU.")
@click.pass_context
def set_config(ctx: click.Context, path: str | None, network: str | None,
               subnet_len: int | None, subnet_min: str | None, subnet_max: str | None,
               ipv6_network: str | None, ipv6_subnet_len: int | None, backend: str | None,
               vni: int | None, port: int | None, direct_routing: bool | None,
               mtu: int | None) -> None:
    """Validate and store the network config, from a file or from options."""
    doc: dict[str, Any] = {}
    if path:
        try:
            with click.open_file(path) as f:
                doc = json.load(f)
        except OSError as exc:
            fail(f"{path}: {exc.strerror}")
        except ValueError as exc:
            fail(f"{path}: not valid JSON ({exc})")
        if not isinstance(doc, dict):
            fail(f"{path}: expected a JSON object")
    top = {"Network": network, "SubnetLen": subnet_len, "SubnetMin": subnet_min,
           "SubnetMax": subnet_max, "IPv6Network": ipv6_network,
           "IPv6SubnetLen": ipv6_subnet_len}
    doc.update({k: v for k, v in top.items() if v is not None})
    if ipv6_network:
        doc["EnableIPv6"] = True
    be = dict(doc.get("Backend") or {}) if isinstance(doc.get("Backend"), dict | None) else {}
    opts = {"Type": backend, "VNI": vni, "Port": port, "DirectRouting": direct_routing,
            "MTU": mtu}
    be.update({k: v for k, v in opts.items() if v is not None})
    if be or "Backend" in doc:
        doc["Backend"] = be if be else doc["Backend"]
    if not doc:
        fail("nothing to set: give -f FILE or --network ...")
    try:
        cfg: NetworkConfig = from_dict(doc)
    except ConfigError as exc:
        fail(str(exc))
        return
    s = settings(ctx)
    with_store(s, lambda store: store.set_config(cfg))
    click.echo(f"network config stored at {s.prefix}/config: {cfg.summary()}, "
               f"{cfg.backend.type}")


def register(group: click.Group) -> None:
    group.add_command(config_group)
