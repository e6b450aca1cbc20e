"""``netweft routes`` and ``netweft status``: what the node should have and what the kernel has.

Both read the store (etcd, or the Kubernetes API with ``--kube-subnet-mgr``: see
``daemon/nodeview.py``) and netlink directly, so they work while the daemon is down.
"""

from __future__ import annotations

import json
import os
import time
from ipaddress import IPv4Network
from typing import Any

import click
from netweft.common import defaults
from netweft.daemon.clicontext import check_kubeconfig_file, fail, kube_subnet_options, settings
from netweft.daemon.nodeview import KUBERNETES, NodeView, ViewError, lease_source, load
from netweft.ipam.lease import Lease


def _local_subnet(subnet_file: str) -> IPv4Network | None:
    from netweft.ipam import subnetenv
    try:
        env = subnetenv.read(subnet_file)
    except subnetenv.SubnetEnvError:
        return None
    return env.subnet.network if env.subnet is not None else None


def _read_status(state_dir: str) -> dict[str, Any] | None:
    from netweft.daemon.statedir import read_status
    return read_status(state_dir)


def _view(ctx: click.Context, kube_subnet_mgr: bool, kubeconfig_file: str | None,
          net_conf_path: str, node_name: str | None, subnet_file: str,
          public_ip: str | None) -> NodeView:
    """The node's view from the store the options name; a Kubernetes-mode problem exits 1 with
    one line."""
    check_kubeconfig_file(kubeconfig_file if kube_subnet_mgr else None)
    source = lease_source(kube_subnet_mgr, kubeconfig_file, net_conf_path, node_name,
                          lambda: settings(ctx))
    try:
        return load(source, _local_subnet(subnet_file), public_ip)
    except ViewError as exc:
        fail(str(exc))
        raise


def _backend(cfg: Any, status: dict[str, Any] | None, state_dir: str, iface_name: str | None):  # type: ignore[no-untyped-def]
    from netweft.backends import registry
    from netweft.backends.netlink import Netlink
    from netweft.daemon import iface

    nl = Netlink()
    name = iface_name or (status or {}).get("iface")
    opts = iface.IfaceOptions(ifaces=(name,)) if name else iface.IfaceOptions()
    try:
        side = iface.select(nl, opts)
    except iface.IfaceError as exc:
        fail(str(exc))
        raise
    try:
        # state_dir: where the daemon keeps what inspection reads (wireguard-go's socket)
        backend = registry.create(registry.BackendParams(cfg.backend, nl, side.underlay,
                                                         state_dir))
    except registry.UnknownBackend as exc:
        fail(str(exc))
        raise
    backend.attach()
    return backend, nl


def _entry(kind: str, want: Any, got: Any) -> dict[str, Any]:
    """One desired entry beside the kernel's entry under the same key (None: missing)."""
    return {"kind": kind, "desired": want.describe(), "kernel": got.describe() if got else None,
            "state": "ok" if got == want else ("differs" if got else "missing")}


def mismatches(status: dict[str, Any], lease: Lease | None, device: dict[str, Any] | None,
               public: dict[str, Any] | None) -> list[str]:
    """Pure: where the kernel differs from what the daemon published or set up, one line each.

    ``status``: the daemon's status file; ``lease``: our lease in etcd; ``device``: the device
    as the kernel has it (``{"present", "mac", "mtu"}``); ``public``: the public interface as
    the kernel has it (``{"present", "addresses": [ip, ...], "mtu"}``)."""
    out = []
    dev, iface_name = status.get("device"), status.get("iface")
    if device is not None and device.get("present") and dev != iface_name:
        mac = lease.vtep_mac.lower() if lease is not None and lease.vtep_mac else None
        if mac and device.get("mac") and device["mac"].lower() != mac:
            out.append(f"device {dev} has MAC {device['mac']}, the lease publishes {mac}")
        if status.get("mtu") and device.get("mtu") != status["mtu"]:
            out.append(f"device {dev} has MTU {device.get('mtu')}, the daemon set "
                       f"{status['mtu']}")
    if public is not None and iface_name:
        if not public.get("present"):
            out.append(f"public interface {iface_name} is gone")
        else:
            addr = status.get("address")
            if addr and addr not in public.get("addresses", []):
                out.append(f"public interface {iface_name} no longer has {addr}")
            if status.get("underlayMTU") and public.get("mtu") != status["underlayMTU"]:
                out.append(f"public interface {iface_name} has MTU {public.get('mtu')}, the "
                           f"daemon uses {status['underlayMTU']}")
    if lease is not None and status.get("publicIP") and str(lease.public_ip) != \
            status["publicIP"]:
        out.append(f"the lease publishes {lease.public_ip}, the daemon uses "
                   f"{status['publicIP']}")
    if status.get("ifaceError"):
        out.append(f"public interface: {status['ifaceError']}")
    return out


def routes_report(backend: Any, own: Lease, leases: list[Lease]) -> dict[str, Any]:
    """Per peer: each desired entry and whether the kernel has it; then stray entries."""
    desired = backend.desired(own, leases)
    actual = backend.actual()
    have_routes = {r.dst: r for r in actual.routes}
    have_neigh = {(n.ip, n.dev): n for n in actual.neighbours}
    have_fdb = set(actual.fdb)
    have_wg = {w.public_key: w for w in actual.wg_peers}
    peers = []
    for p in desired.peers:
        entries = []
        if p.neighbour is not None:
            entries.append(_entry("neighbour", p.neighbour,
                                  have_neigh.get((p.neighbour.ip, p.neighbour.dev))))
        if p.fdb is not None:
            entries.append({"kind": "fdb", "desired": p.fdb.describe(),
                            "kernel": p.fdb.describe() if p.fdb in have_fdb else None,
                            "state": "ok" if p.fdb in have_fdb else "missing"})
        if p.wg is not None:
            entries.append(_entry("wg-peer", p.wg, have_wg.get(p.wg.public_key)))
        if p.route is not None:
            entries.append(_entry("route", p.route, have_routes.get(p.route.dst)))
        peers.append({"subnet": str(p.subnet), "publicIP": str(p.public_ip), "error": p.error,
                      "entries": entries})
    stray = ([{"kind": "route", "kernel": r.describe()}
              for r in sorted(actual.routes - desired.routes)
              if r.dst not in {d.dst for d in desired.routes}]
             + [{"kind": "neighbour", "kernel": n.describe()}
                for n in sorted(actual.neighbours - desired.neighbours)
                if (n.ip, n.dev) not in {(d.ip, d.dev) for d in desired.neighbours}]
             + [{"kind": "fdb", "kernel": f.describe()} for f in sorted(actual.fdb - desired.fdb)]
             + [{"kind": "wg-peer", "kernel": w.describe()} for w in sorted(actual.wg_peers)
                if w.public_key not in {d.public_key for d in desired.wg_peers}])
    return {"node": {"subnet": str(own.subnet), "publicIP": str(own.public_ip),
                     "backend": backend.type_name},
            "peers": peers, "stray": stray}


def render_routes(report: dict[str, Any]) -> str:
    node = report["node"]
    lines = [f"node {node['subnet']} ({node['publicIP']}, {node['backend']})"]
    for peer in report["peers"]:
        lines.append(f"peer {peer['subnet']} at {peer['publicIP']}"
                     + (f"  ERROR: {peer['error']}" if peer["error"] else ""))
        for e in peer["entries"]:
            mark = {"ok": "ok     ", "missing": "MISSING", "differs": "DIFFERS"}[e["state"]]
            lines.append(f"  {mark} {e['kind']:<9} {e['desired']}")
            if e["state"] == "differs":
                lines.append(f"          kernel:   {e['kernel']}")
    for s in report["stray"]:
        lines.append(f"STRAY   {s['kind']:<9} {s['kernel']}")
    if not report["peers"]:
        lines.append("(no peers)")
    return "\n".join(lines)


@click.command("routes")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--subnet-file", default=defaults.SUBNET_FILE, show_default=True)
@click.option("--state-dir", default=defaults.STATE_DIR, show_default=True)
@click.option("--iface", default=None, help="Public interface (default: the daemon's, else the "
              "default route's).")
@kube_subnet_options()
@click.pass_context
def routes_cmd(ctx: click.Context, as_json: bool, subnet_file: str, state_dir: str,
               iface: str | None, kube_subnet_mgr: bool, kubeconfig_file: str | None,
               net_conf_path: str, node_name: str | None) -> None:
    """Per peer lease: the desired route/neighbour/FDB entry beside what the kernel has."""
    status = _read_status(state_dir)
    view = _view(ctx, kube_subnet_mgr, kubeconfig_file, net_conf_path, node_name, subnet_file,
                 (status or {}).get("publicIP"))
    if view.error:
        fail(f"cannot read leases: {view.error}")
    if view.cfg is None:
        fail(f"no network config at {settings(ctx).prefix}/config")
    if view.own is None:
        fail("this node has no lease (" + (
            "its Node carries no Flannel annotations: is `netweft daemon --kube-subnet-mgr` "
            "running there?)" if view.kind == KUBERNETES
            else f"{subnet_file} names none that etcd holds)"))
    assert view.own is not None
    backend, nl = _backend(view.cfg, status, state_dir, iface)
    try:
        report = routes_report(backend, view.own, view.leases)
    finally:
        nl.close()
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(render_routes(report))
    bad = any(e["state"] != "ok" for p in report["peers"] for e in p["entries"]) \
        or report["stray"]
    ctx.exit(0 if not bad else 3)


def describe_wireguard(dp: dict[str, Any]) -> str:
    """``kernel`` or ``userspace wireguard-go pid N (socket S, R restarts)``, port, public key."""
    if dp.get("implementation") == "userspace":
        what = (f"userspace wireguard-go pid {dp.get('pid')} (socket {dp.get('socket')}, "
                f"{dp.get('restarts', 0)} restarts)")
    else:
        what = "kernel"
    return f"{what}, port {dp.get('listenPort')}, public key {dp.get('publicKey')}"


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--subnet-file", default=defaults.SUBNET_FILE, show_default=True)
@click.option("--state-dir", default=defaults.STATE_DIR, show_default=True)
@kube_subnet_options()
@click.pass_context
def status_cmd(ctx: click.Context, as_json: bool, subnet_file: str, state_dir: str,
               kube_subnet_mgr: bool, kubeconfig_file: str | None, net_conf_path: str,
               node_name: str | None) -> None:
    """The node's lease, backend, device, MTU, peers and last reconcile."""
    from netweft.backends.netlink import Netlink

    status = _read_status(state_dir) or {}
    own_subnet = _local_subnet(subnet_file)
    view = _view(ctx, kube_subnet_mgr, kubeconfig_file, net_conf_path, node_name, subnet_file,
                 status.get("publicIP"))
    pid = status.get("pid")
    running = False
    if pid:
        try:
            os.kill(int(pid), 0)
            running = True
        except (OSError, ValueError):
            running = False
    out: dict[str, Any] = {
        "daemon": "running" if running else "not running",
        "subnet": str(own_subnet) if own_subnet else
        (str(view.own.subnet) if view.own else None),
        "lease": view.own.to_dict() if view.own else None,
        "store": {"kind": view.kind, "where": view.store, "state": view.error or "ok"},
        **({"etcd": view.error or "ok"} if view.kind != KUBERNETES else {}),
        "backend": view.cfg.backend.type if view.cfg else status.get("backend"),
        "device": status.get("device"),
        "iface": status.get("iface"),
        "publicIP": status.get("publicIP"),
        "peers": len([le for le in view.leases if view.own is None or le.subnet != view.own.subnet
                      if le.public_ip is not None]) if not view.error
        else status.get("peers"),
        "peersProgrammed": status.get("peers"),
        "lastReconcile": status.get("lastReconcile"),
        "errors": status.get("errors") or [],
        "dataplane": status.get("dataplane") or {},
    }
    dev = out["device"]
    public = None
    nl = Netlink()
    try:
        link = nl.link(dev) if dev else None
        if out["iface"]:
            plink = nl.link(out["iface"])
            public = {"present": plink is not None, "mtu": plink.mtu if plink else None,
                      "addresses": [str(a.ip) for _, a in nl.addresses(plink.index)]
                      if plink else []}
    finally:
        nl.close()
    if dev:
        out["deviceState"] = ({"present": True, "mtu": link.mtu, "mac": link.mac, "up": link.up}
                              if link else {"present": False})
        out["mtu"] = link.mtu if link else status.get("mtu")
    else:
        out["mtu"] = status.get("mtu")
    out["mismatches"] = mismatches(status, view.own, out.get("deviceState"), public) \
        if status else []
    if as_json:
        click.echo(json.dumps(out, indent=2, default=str))
        return
    lease = out["lease"]
    expires = "-"
    if lease:
        if view.kind == KUBERNETES:
            expires = "with its Node"
        elif lease.get("reserved"):
            expires = "never (reserved)"
        elif lease.get("expiration"):
            expires = f"in {int(lease['expiration'] - time.time())}s"
    last = out["lastReconcile"]
    rows = [
        ("daemon", out["daemon"]),
        ("store", f"{view.store} ok" if not view.error else f"{view.store}: {view.error}"),
        ("lease", f"{out['subnet'] or '-'} (public IP {out['publicIP'] or '-'}, "
                  f"expires {expires})" if lease else
         f"{out['subnet'] or '-'} (not in {view.kind})"),
        ("backend", out["backend"] or "-"),
        ("device", f"{dev or '-'}" + (
            "" if not dev else (" (missing)" if not out["deviceState"]["present"] else
                                f" mac {out['deviceState']['mac']}"
                                if out["deviceState"]["mac"] else ""))),
        ("mtu", out["mtu"] or "-"),
        *([("wireguard", describe_wireguard(out["dataplane"]))]
          if out["dataplane"].get("implementation") else []),
        ("peers", f"{out['peers']} leased, {out['peersProgrammed'] or 0} programmed"),
        ("last reconcile", f"{int(time.time() - last)}s ago" if last else "never"),
    ]
    for line in out["mismatches"]:
        rows.append(("MISMATCH", line))
    for err in out["errors"][:5]:
        rows.append(("error", err))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        click.echo(f"{key.ljust(width)}  {value}")


def register(group: click.Group) -> None:
    group.add_command(routes_cmd)
    group.add_command(status_cmd)
