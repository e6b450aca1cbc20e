"""``netweft proxy``: the service proxy of one node (kube-proxy replacement)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import socket
import subprocess
from typing import Any

import click
from netweft.common import defaults
from netweft.daemon.clicontext import fail, services_prefix_option, settings
from netweft.proxy.constants import HEALTHZ_PORT

SKIP_IFACES = re.compile(r"^(lo|cni|flannel|veth|docker|kube-ipvs|cali|vxlan)")


def discover_node_ips() -> tuple[str, ...]:
    """The node's global IPv4 addresses, leaving out loopback and pod/overlay devices."""
    proc = subprocess.run(["ip", "-j", "-4", "addr", "show", "scope", "global"],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return ()
    found: list[str] = []
    for link in json.loads(proc.stdout or "[]"):
        if SKIP_IFACES.match(link.get("ifname", "")):
            continue
        found += [a["local"] for a in link.get("addr_info", []) if a.get("family") == "inet"]
    return tuple(found)


def _check_ips(values: tuple[str, ...], field: str, network: bool = False) -> tuple[str, ...]:
    out = []
    for v in values:
        try:
            parsed: Any = (ipaddress.ip_network(v, strict=False) if network
                           else ipaddress.ip_address(v))
        except ValueError:
            fail(f"{field}: {v!r} is not an IPv4 {'network' if network else 'address'}")
        if parsed.version != 4:
            fail(f"{field}: {v!r}: only IPv4 is proxied")
        if not network and parsed.is_loopback:
            fail(f"{field}: {v!r} is a loopback address (NodePorts never use it)")
        out.append(str(parsed))
    return tuple(out)


def make_source(kind: str, ctx: click.Context, kubeconfig: str | None,
                services_prefix: str) -> Any:
    """The source, imported lazily (the Kubernetes client loads only when used)."""
    if kind == "kube":
        import yaml
        from lightkube import ConfigError as KubeConfigError
        from netweft.proxy.sources.kube import KubeSource
        source = KubeSource(kubeconfig)
        try:
            source.load_config()  # fail now, with one line, not inside the event loop
        except (KubeConfigError, OSError, ValueError, yaml.YAMLError) as exc:
            where = f"--kubeconfig {kubeconfig}" if kubeconfig else "kubeconfig"
            fail(f"{where}: {' '.join(str(exc).split())}")
        return source
    from netweft.daemon.etcdrun import refuse_tls_mistakes
    from netweft.proxy.sources.etcd import EtcdSource
    refuse_tls_mistakes(settings(ctx))  # fail now, with one line, not inside the event loop
    return EtcdSource(settings(ctx), services_prefix)


@click.command("proxy")
@click.option("--source", "source_kind", type=click.Choice(["kube", "etcd"]), default="kube",
              show_default=True, help="Where Services and endpoints come from.")
@click.option("--mode", type=click.Choice(["nftables", "iptables"]), default="nftables",
              show_default=True, help="Dataplane to program.")
@click.option("--node-name", default=None, help="This node's name (endpoint locality). "
              "Default: the hostname.")
@click.option("--node-ip", "node_ips", multiple=True,
              help="Address NodePorts answer on (repeatable). Default: the node's global IPv4 "
              "addresses, except pod/overlay devices; never loopback.")
@click.option("--cluster-cidr", "cluster_cidrs", multiple=True,
              help="Pod network (repeatable): other sources reaching a ClusterIP are "
              "masqueraded. Default: FLANNEL_NETWORK from --subnet-file.")
@click.option("--subnet-file", default=defaults.SUBNET_FILE, show_default=True,
              help="subnet.env to read the pod network from.")
@click.option("--kubeconfig", default=None, help="kubeconfig for --source kube.")
@services_prefix_option
@click.option("--min-sync-interval", type=click.FloatRange(0, 3600), default=1.0,
              show_default=True, help="Seconds between two syncs; changes meanwhile coalesce.")
@click.option("--full-resync-interval", type=click.FloatRange(0, 86400), default=3600,
              show_default=True, help="Seconds between full rewrites of the ruleset, healing "
              "edits made by others that were not noticed at once (0: never; like kube-proxy's "
              "hourly full sync; session affinity is kept).")
@click.option("--healthz-bind-address", default="0.0.0.0", show_default=True)
@click.option("--healthz-port", type=click.IntRange(0, 65535), default=HEALTHZ_PORT,
              show_default=True,
              help="Port of /healthz and /metrics (0: none).")
@click.option("--cleanup", is_flag=True, help="Remove the proxy's rules and exit.")
@click.option("-v", "--verbose", is_flag=True)
@click.pass_context
def proxy_command(ctx: click.Context, source_kind: str, mode: str, node_name: str | None,
                  node_ips: tuple[str, ...], cluster_cidrs: tuple[str, ...], subnet_file: str,
                  kubeconfig: str | None, services_prefix: str,
                  min_sync_interval: float, full_resync_interval: float,
                  healthz_bind_address: str, healthz_port: int,
                  cleanup: bool, verbose: bool) -> None:
    """Make Services work on this node: ClusterIP, NodePort, externalIPs, LoadBalancer IPs."""
    from netweft.backends.nft.applier import NftError
    from netweft.proxy.conntrack import ConntrackCleaner
    from netweft.proxy.dataplane import IptablesDataplane, NftablesDataplane
    from netweft.proxy.plan import NodeContext
    from netweft.proxy.runner import ProxyRunner, RunnerOptions

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    given_ips = _check_ips(node_ips, "--node-ip")
    node_ips = given_ips or discover_node_ips()
    if not cluster_cidrs:
        from netweft.ipam.subnetenv import SubnetEnvError, read
        try:
            env = read(subnet_file)
        except SubnetEnvError as exc:
            if not cleanup:
                fail(f"--cluster-cidr: not given and {exc}")
        else:
            cluster_cidrs = (str(env.network),) if env.network else ()
    cluster_cidrs = _check_ips(cluster_cidrs, "--cluster-cidr", network=True)
    node = NodeContext(node_name or socket.gethostname(), node_ips, cluster_cidrs)
    dataplane: NftablesDataplane | IptablesDataplane = (
        NftablesDataplane(node) if mode == "nftables" else IptablesDataplane(node))
    if cleanup:
        from netweft.proxy.ipt_apply import IptablesError
        try:
            dataplane.cleanup()
        except (NftError, IptablesError, OSError) as exc:
            fail(f"--cleanup: {exc}")
        return
    source = make_source(source_kind, ctx, kubeconfig, services_prefix)
    runner = ProxyRunner(node, dataplane, ConntrackCleaner(), RunnerOptions(
        min_sync_interval=min_sync_interval, status_address=healthz_bind_address,
        status_port=healthz_port or None, full_resync_interval=full_resync_interval or None,
        node_ips=None if given_ips else discover_node_ips))
    try:
        asyncio.run(runner.run(source))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        if "address" in str(exc).lower():
            fail(f"--healthz-port: {exc}")
        fail(f"proxy stopped: {exc}")
    except Exception as exc:  # noqa: BLE001 - one line for the user; -v shows the traceback
        if verbose:
            logging.getLogger("netweft.proxy").exception("proxy stopped")
        first = (str(exc).splitlines() or [""])[0]
        fail(f"proxy stopped (--source {source_kind}): {type(exc).__name__}: {first}")


def register(group: click.Group) -> None:
    group.add_command(proxy_command)
