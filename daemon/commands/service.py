"""``netweft service create|list|show|delete``: services for clusters without Kubernetes.

Records live in etcd under ``--services-prefix`` (default ``/netweft``); the etcd service source of
``netweft proxy`` turns them, and the pod records node daemons write, into Services + endpoints.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
from netweft.daemon.clicontext import fail, services_prefix_option, settings
from netweft.kv.etcd import EtcdClient, EtcdError
from netweft.proxy.model import DEFAULT_AFFINITY_TIMEOUT, Endpoint, ServiceKey, ServiceType
from netweft.proxy.records import (
    DEFAULT_SERVICE_CIDR,
    PodIndex,
    PodRecord,
    RecordError,
    ServiceRecord,
    endpoints_for,
)
from netweft.proxy.servicestore import (
    check_ports,
    create_service,
    delete_service,
    get_service,
    list_pods,
    list_services,
    parse_port_spec,
)

T = TypeVar("T")
CLI_TIMEOUT = 3.0


def _run(ctx: click.Context, action: Callable[[EtcdClient], Awaitable[T]]) -> T:
    """Run ``action(etcd)``; etcd and record errors exit 1 with one line."""

    async def main() -> T:
        async with EtcdClient(settings(ctx), timeout=CLI_TIMEOUT) as etcd:
            return await action(etcd)

    try:
        return asyncio.run(main())
    except (EtcdError, RecordError) as exc:
        fail(str(exc))
        raise  # unreachable: fail() exits


def render_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def _ports_text(record: ServiceRecord) -> str:
    parts = []
    for p in record.ports:
        text = f"{p.port}"
        if p.node_port is not None:
            text += f":{p.node_port}"
        text += f"->{p.target_port}/{p.protocol.value}"
        parts.append(f"{p.name}={text}" if p.name else text)
    return ",".join(parts)


def _selector_text(selector: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items())) or "-"


def _parse_selector(values: tuple[str, ...]) -> dict[str, str]:
    selector: dict[str, str] = {}
    for value in values:
        for item in (i.strip() for i in value.split(",")):
            if not item:
                continue
            key, sep, val = item.partition("=")
            if not sep or not key.strip():
                fail(f"--selector: {item!r} is not key=value")
            selector[key.strip()] = val.strip()
    return selector


def _record_json(record: ServiceRecord, endpoints: tuple[Endpoint, ...] | None) -> dict[str, Any]:
    d = json.loads(record.to_json())
    if endpoints is not None:
        d["endpoints"] = [{"address": e.address, "node": e.node, "ready": e.ready,
                           "ports": [{"name": p.name, "port": p.port,
                                      "protocol": p.protocol.value} for p in e.ports]}
                          for e in endpoints]
    return d


@click.group("service")
def service_group() -> None:
    """Services for clusters without Kubernetes (records in etcd)."""


namespace_option = click.option("-n", "--namespace", default="default", show_default=True,
                                help="Namespace of the service.")


@service_group.command("create")
@click.argument("name")
@namespace_option
@click.option("--port", "ports", multiple=True, required=True,
              metavar="[NAME=]PORT[:TARGET][/PROTO]",
              help="A service port, e.g. 80:8080/tcp, http=80:8080, 53/udp, 443:https "
                   "(named target port). Repeat for several; name them then.")
@click.option("--selector", "selectors", multiple=True, metavar="KEY=VALUE[,...]",
              help="Pods (by label, same namespace) that back the service.")
@click.option("--type", "service_type", default="ClusterIP", show_default=True,
              type=click.Choice([t.value for t in ServiceType]), help="Service type.")
@click.option("--node-port", "node_ports", multiple=True, type=int,
              help="Node port of the n-th --port (NodePort/LoadBalancer); allocated if absent.")
@click.option("--cluster-ip", default="", help="A fixed cluster IP; allocated if absent.")
@click.option("--external-ip", "external_ips", multiple=True, help="An external IP to answer on.")
@click.option("--affinity", is_flag=True, help="Session affinity by client IP.")
@click.option("--affinity-timeout", type=click.IntRange(1, 86400),
              default=DEFAULT_AFFINITY_TIMEOUT, show_default=True, help="Seconds.")
@click.option("--external-traffic-policy", type=click.Choice(["Cluster", "Local"]),
              default="Cluster", show_default=True)
@click.option("--internal-traffic-policy", type=click.Choice(["Cluster", "Local"]),
              default="Cluster", show_default=True)
@click.option("--service-cidr", envvar="NETWEFT_SERVICE_CIDR", default=DEFAULT_SERVICE_CIDR,
              show_default=True, help="Range cluster IPs are allocated from.")
@click.option("--json", "as_json", is_flag=True, help="Print the stored record as JSON.")
@services_prefix_option
@click.pass_context
def create(ctx: click.Context, name: str, namespace: str, ports: tuple[str, ...],
           selectors: tuple[str, ...], service_type: str, node_ports: tuple[int, ...],
           cluster_ip: str, external_ips: tuple[str, ...], affinity: bool,
           affinity_timeout: int, external_traffic_policy: str, internal_traffic_policy: str,
           service_cidr: str, as_json: bool, services_prefix: str) -> None:
    """Create service NAME; its cluster IP and node ports are allocated unless given."""
    try:
        cidr = ipaddress.IPv4Network(service_cidr, strict=True)
    except ValueError as exc:
        fail(f"--service-cidr: {service_cidr!r} is not an IPv4 network ({exc})")
        return
    if len(node_ports) > len(ports):
        fail("--node-port: more node ports than --port options")
    try:
        parsed = [parse_port_spec(p, i) for i, p in enumerate(ports)]
        parsed = [p if i >= len(node_ports) else
                  type(p)(p.name, p.protocol, p.port, p.target_port, node_ports[i])
                  for i, p in enumerate(parsed)]
        check_ports(parsed)
        for ip in external_ips:
            ipaddress.IPv4Address(ip)
    except RecordError as exc:
        fail(str(exc))
        return
    except ValueError:
        fail(f"--external-ip: {ip!r} is not an IPv4 address")
        return
    request = ServiceRecord(
        namespace=namespace, name=name, type=ServiceType(service_type), cluster_ip=cluster_ip,
        ports=tuple(parsed), selector=_parse_selector(selectors), session_affinity=affinity,
        affinity_timeout=affinity_timeout, external_ips=tuple(external_ips),
        external_traffic_local=external_traffic_policy == "Local",
        internal_traffic_local=internal_traffic_policy == "Local",
    )
    record = _run(ctx, lambda etcd: create_service(etcd, services_prefix, request, cidr))
    if as_json:
        click.echo(json.dumps(_record_json(record, None), indent=2))
        return
    click.echo(f"created service {record.key}: {record.type.value} {record.cluster_ip} "
               f"ports {_ports_text(record)} selector {_selector_text(record.selector)}")


async def _with_pods(
    etcd: EtcdClient, prefix: str,
) -> tuple[list[ServiceRecord], list[PodRecord]]:
    return await list_services(etcd, prefix), await list_pods(etcd, prefix)


@service_group.command("list")
@click.option("-n", "--namespace", default=None, help="Only this namespace (default: all).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@services_prefix_option
@click.pass_context
def list_cmd(ctx: click.Context, namespace: str | None, as_json: bool,
             services_prefix: str) -> None:
    """List services with their cluster IP, ports, selector and endpoint count."""
    records, pods = _run(ctx, lambda etcd: _with_pods(etcd, services_prefix))
    if namespace is not None:
        records = [r for r in records if r.namespace == namespace]
    index = PodIndex.of(pods)

    def endpoints_of(r: ServiceRecord) -> tuple[Endpoint, ...]:
        return endpoints_for(r, index.selected(r.namespace, r.selector))

    if as_json:
        click.echo(json.dumps([_record_json(r, endpoints_of(r)) for r in records], indent=2))
        return
    if not records:
        click.echo("no services")
        return
    rows = [["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "PORTS", "SELECTOR", "ENDPOINTS"]]
    for r in records:
        endpoints = endpoints_of(r)
        ready = sum(1 for e in endpoints if e.ready)
        rows.append([r.namespace, r.name, r.type.value, r.cluster_ip, _ports_text(r),
                     _selector_text(r.selector), f"{ready}/{len(endpoints)}"])
    click.echo(render_table(rows))


@service_group.command("show")
@click.argument("name")
@namespace_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@services_prefix_option
@click.pass_context
def show(ctx: click.Context, name: str, namespace: str, as_json: bool,
         services_prefix: str) -> None:
    """Show one service and the endpoints its selector picks."""
    key = ServiceKey(namespace, name)

    async def act(etcd: EtcdClient) -> tuple[ServiceRecord | None, list[PodRecord]]:
        return await get_service(etcd, services_prefix, key), await list_pods(etcd,
                                                                                services_prefix)

    record, pods = _run(ctx, act)
    if record is None:
        fail(f"service {key} does not exist")
        return
    endpoints = endpoints_for(record, pods)
    if as_json:
        click.echo(json.dumps(_record_json(record, endpoints), indent=2))
        return
    affinity = f"ClientIP ({record.affinity_timeout}s)" if record.session_affinity else "None"
    lines = [
        f"Name:        {record.name}",
        f"Namespace:   {record.namespace}",
        f"Type:        {record.type.value}",
        f"Cluster IP:  {record.cluster_ip}",
        f"Ports:       {_ports_text(record)}",
        f"Selector:    {_selector_text(record.selector)}",
        f"Affinity:    {affinity}",
    ]
    if record.external_ips:
        lines.append(f"External IPs: {','.join(record.external_ips)}")
    external = "Local" if record.external_traffic_local else "Cluster"
    internal = "Local" if record.internal_traffic_local else "Cluster"
    lines.append(f"Traffic:     external {external}, internal {internal}")
    click.echo("\n".join(lines))
    if not endpoints:
        click.echo("Endpoints:   none")
        return
    click.echo("Endpoints:")
    rows = [["ADDRESS", "NODE", "READY", "PORTS"]]
    for e in endpoints:
        rows.append([e.address, e.node or "-", "yes" if e.ready else "no",
                     ",".join(f"{p.name + '=' if p.name else ''}{p.port}/{p.protocol.value}"
                              for p in e.ports)])
    click.echo("  " + render_table(rows).replace("\n", "\n  "))


@service_group.command("delete")
@click.argument("name")
@namespace_option
@services_prefix_option
@click.pass_context
def delete(ctx: click.Context, name: str, namespace: str, services_prefix: str) -> None:
    """Delete a service and release its cluster IP and node ports."""
    key = ServiceKey(namespace, name)
    record = _run(ctx, lambda etcd: delete_service(etcd, services_prefix, key))
    click.echo(f"deleted service {key} ({record.cluster_ip})")


def register(group: click.Group) -> None:
    group.add_command(service_group)
