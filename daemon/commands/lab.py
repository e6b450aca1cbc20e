"""``netweft lab up|status|check|down|exec|add-node|remove-node``: a multi-node cluster in network
namespaces on this machine (see daemon/lab/)."""

from __future__ import annotations

import json
import os
import sys
from ipaddress import IPv4Network

import click
from netweft.common import defaults
from netweft.daemon.clicontext import fail
from netweft.daemon.lab.lab import Lab, LabError, down
from netweft.daemon.lab.topology import (
    BACKENDS,
    CONTROL_PLANES,
    DATAPLANES,
    DEFAULT_NETWORK,
    DEFAULT_PREFIX,
    PROXY_MODES,
    STATE_ROOT,
    LabSpec,
    LabSpecError,
)


def _prefix_option(func):  # type: ignore[no-untyped-def]
    return click.option(
        "--prefix", envvar="NETWEFT_LAB_PREFIX", default=DEFAULT_PREFIX, show_default=True,
        help="Name prefix of the lab's namespaces (several labs may coexist).")(func)


def _load(prefix: str) -> Lab:
    try:
        return Lab.load(prefix, STATE_ROOT)
    except LabError as exc:
        fail(str(exc))
        raise AssertionError from None  # unreachable: fail exits


def _need_root() -> None:
    if os.geteuid() != 0:
        fail("the lab needs root (it creates network namespaces)")


def register(group: click.Group) -> None:
    @group.group("lab")
    def lab() -> None:
        """A netweft cluster in network namespaces: underlay bridge, etcd, N nodes, pods."""

    @lab.command("up")
    @_prefix_option
    @click.option("--nodes", default=3, show_default=True, type=int, help="Number of nodes.")
    @click.option("--pods-per-node", default=2, show_default=True, type=int,
                  help="Pods created on each node through the CNI plugin.")
    @click.option("--backend", type=click.Choice(BACKENDS), default="vxlan", show_default=True)
    @click.option("--vni", default=1, show_default=True, type=int, help="VXLAN network id.")
    @click.option("--port", default=defaults.VXLAN_PORT, show_default=True, type=int,
                  help="VXLAN UDP port.")
    @click.option("--network", default=str(DEFAULT_NETWORK), show_default=True,
                  help="Pod network (Flannel's Network).")
    @click.option("--subnet-len", default=24, show_default=True, type=int,
                  help="Per-node subnet length (Flannel's SubnetLen).")
    @click.option("--dataplane", type=click.Choice(DATAPLANES), default="netweft",
                  show_default=True,
                  help="reference: wire the same topology by hand with `ip` (no daemons), the "
                       "yardstick of bench/dataplane.py.")
    @click.option("--proxy/--no-proxy", default=True, show_default=True,
                  help="Run `netweft proxy` on every node and a NodePort service over the pods.")
    @click.option("--proxy-mode", type=click.Choice(PROXY_MODES), default="nftables",
                  show_default=True, help="The proxy's dataplane (`netweft proxy --mode`).")
    @click.option("--flannel-nodes", default=0, show_default=True, type=int,
                  help="The first K nodes run the real flanneld (deploy/flannel.sh) instead of "
                       "netweft's daemon, their pods wired by the reference bridge plugin.")
    @click.option("--control-plane", type=click.Choice(CONTROL_PLANES), default="etcd",
                  show_default=True,
                  help="kubernetes: a real kube-apiserver + kube-controller-manager "
                       "(deploy/controlplane.sh) in the control-plane namespace; nodes run "
                       "`netweft daemon --kube-subnet-mgr` and `netweft proxy --source kube`, "
                       "pods are Pod objects, the service a Kubernetes Service.")
    @click.option("--check/--no-check", "run_check", default=False,
                  help="Run `lab check` once the lab is up.")
    def up(prefix: str, nodes: int, pods_per_node: int, backend: str, vni: int, port: int,
           network: str, subnet_len: int, dataplane: str, proxy: bool,
           proxy_mode: str, flannel_nodes: int, control_plane: str, run_check: bool) -> None:
        """Build the lab and start netweft on every node."""
        _need_root()
        try:
            net = IPv4Network(network)
        except ValueError as exc:
            fail(f"--network: {exc}")
            return
        spec = LabSpec(prefix=prefix, nodes=nodes, pods_per_node=pods_per_node, backend=backend,
                       vni=vni, port=port, network=net, subnet_len=subnet_len,
                       state_root=STATE_ROOT, dataplane=dataplane, proxy=proxy,
                       proxy_mode=proxy_mode, flannel_nodes=flannel_nodes,
                       control_plane=control_plane)
        try:
            spec.validate()
            built = Lab.up(spec, log=lambda msg: click.echo(f"  {msg}"))
        except (LabSpecError, LabError) as exc:
            fail(str(exc))
            return
        click.echo(f"lab {prefix!r} is up ({nodes} nodes, {backend}, {control_plane}); "
                   f"`netweft lab check` proves it, `netweft lab down` removes it")
        if run_check:
            report = built.check()
            click.echo(report.render())
            if not report.ok:
                sys.exit(1)

    @lab.command("status")
    @_prefix_option
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    def status(prefix: str, as_json: bool) -> None:
        """Show the lab's nodes, daemons, subnets, pods and leases."""
        _need_root()
        st = _load(prefix).status()
        if as_json:
            click.echo(json.dumps(st, indent=2))
            return
        if "kube" in st:
            _echo_kube_header(st)
        else:
            click.echo(f"lab {st['prefix']} ({st['backend']}), etcd {st['etcd']} "
                       f"{'running' if st['etcd_running'] else 'STOPPED'}, "
                       f"state {st['state_dir']}")
        for n in st["nodes"]:
            kind = n.get("daemon", "netweft")
            daemon = f"{kind} pid {n['daemon_pid']}" if n["daemon_pid"] else f"{kind} STOPPED"
            proxy = ""
            if n["name"] in st["proxies"]:
                proxy = "  proxy " + ("running" if st["proxies"][n["name"]] else "STOPPED")
            click.echo(f"  {n['name']:<8} {n['ip']:<14} {daemon:<20} subnet {n['subnet']}{proxy}")
        for p in st["pods"]:
            click.echo(f"  {p['name']:<14} on {p['node']:<8} {p['ip']}")
        if "kube" in st:
            _echo_kube_objects(st["kube"])
            return
        click.echo(f"  {len([k for k in st['leases'] if k != 'error'])} leases in etcd")
        svc = st["service"]
        if svc:
            click.echo(f"  service {svc['name']}: {svc['cluster_ip']}:{svc['port']}, "
                       f"NodePort {svc['node_port']} on every node")

    @lab.command("check")
    @_prefix_option
    @click.option("--iperf-seconds", default=3.0, show_default=True, type=float,
                  help="Length of the iperf3 run (0 skips it).")
    def check(prefix: str, iperf_seconds: float) -> None:
        """Connectivity matrix + iperf3 throughput; exits 1 on any failure."""
        _need_root()
        report = _load(prefix).check(iperf_seconds=iperf_seconds)
        click.echo(report.render())
        if not report.ok:
            sys.exit(1)

    @lab.command("down")
    @_prefix_option
    def down_cmd(prefix: str) -> None:
        """Remove every namespace, process and file of the lab (also after a crash)."""
        _need_root()
        try:
            removed = down(prefix, STATE_ROOT)
        except LabSpecError as exc:
            fail(str(exc))
            return
        for item in removed:
            click.echo(f"  removed {item}")
        click.echo(f"lab {prefix!r} is down" if removed else f"no lab {prefix!r} was found")

    @lab.command("exec", context_settings={"ignore_unknown_options": True})
    @_prefix_option
    @click.argument("node")
    @click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
    def exec_cmd(prefix: str, node: str, cmd: tuple[str, ...]) -> None:
        """Run CMD in lab NODE (a node, a pod, etcd, outside or underlay):
        `netweft lab exec node1 -- netweft routes`."""
        _need_root()
        lab_ = _load(prefix)
        try:
            proc = lab_.exec(node, list(cmd))
        except LabError as exc:
            fail(str(exc))
            return
        except FileNotFoundError as exc:
            fail(f"CMD: {exc}")
            return
        sys.exit(proc.returncode)

    @lab.command("add-node")
    @_prefix_option
    @click.option("--pods", default=None, type=int, help="Pods to start on it (default: as up).")
    @click.option("--flanneld", is_flag=True, help="The node runs the real flanneld.")
    def add_node(prefix: str, pods: int | None, flanneld: bool) -> None:
        """Join one more node to a running lab."""
        _need_root()
        lab_ = _load(prefix)
        try:
            node = lab_.add_node(pods, flanneld=flanneld)
        except LabError as exc:
            fail(str(exc))
            return
        click.echo(f"{node.name} ({node.ip}) joined, subnet {lab_.node_subnet(node)}")

    @lab.command("migrate-node")
    @_prefix_option
    @click.argument("node")
    def migrate_node(prefix: str, node: str) -> None:
        """Swap a flanneld node to netweft's daemon (same subnet.env, pods keep running)."""
        _need_root()
        lab_ = _load(prefix)
        try:
            lab_.migrate_node(node)
        except KeyError:
            fail(f"NODE: no node {node!r} in lab {prefix!r}")
        except LabError as exc:
            fail(str(exc))
        click.echo(f"{node} runs netweft's daemon, subnet {lab_.node_subnet(lab_.topo.node(node))}")

    @lab.command("remove-node")
    @_prefix_option
    @click.argument("node")
    def remove_node(prefix: str, node: str) -> None:
        """Stop a node's daemon and remove its namespace and pods (its lease stays in etcd)."""
        _need_root()
        lab_ = _load(prefix)
        try:
            lab_.remove_node(node)
        except KeyError:
            fail(f"NODE: no node {node!r} in lab {prefix!r}")
        click.echo(f"{node} removed")


def _echo_kube_header(st: dict) -> None:  # type: ignore[type-arg]
    k = st["kube"]
    procs = ", ".join(f"{name} {'running' if up else 'STOPPED'}"
                      for name, up in k["processes"].items())
    click.echo(f"lab {st['prefix']} ({st['backend']}), Kubernetes at {k['server']} ({procs}), "
               f"state {st['state_dir']}")


def _echo_kube_objects(k: dict) -> None:  # type: ignore[type-arg]
    """What the API says: Nodes (podCIDR, Flannel's annotations, NetworkUnavailable), Pods,
    Services with their ready endpoints."""
    if "error" in k:
        click.echo(f"  API: {k['error']}")
        return
    click.echo("  Nodes (from the API):")
    for n in k["nodes"]:
        notes = n["annotations"]
        data = notes.get("backend-data", "")
        click.echo(f"    {n['name']:<8} podCIDR {n['podCIDR']}  NetworkUnavailable="
                   f"{n['NetworkUnavailable']}  public-ip {notes.get('public-ip')}  "
                   f"backend {notes.get('backend-type')} {data}")
    click.echo("  Pods (from the API):")
    for p in k["pods"]:
        click.echo(f"    {p['name']:<14} on {p['node']:<8} {p['podIP']}  Ready={p['ready']}")
    for svc in k["services"]:
        ports = ", ".join(f"{p['port']}->{p['targetPort']}"
                          + (f" NodePort {p['nodePort']}" if p.get("nodePort") else "")
                          for p in svc["ports"])
        click.echo(f"  Service {svc['name']} ({svc['type']}) {svc['clusterIP']} {ports}; "
                   f"ready endpoints (EndpointSlices): {', '.join(svc['ready_endpoints']) or '-'}")
