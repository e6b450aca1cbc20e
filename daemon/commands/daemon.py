"""``netweft daemon``: the node agent (lease, backend, subnet.env, firewall, peers, metrics)."""

from __future__ import annotations

import asyncio
import logging
import signal

import click
from netweft.common import defaults
from netweft.daemon.clicontext import (
    check_kubeconfig_file,
    fail,
    kube_subnet_options,
    services_prefix_option,
    settings,
)
from netweft.daemon.etcdrun import refuse_tls_mistakes


@click.command("daemon")
@click.option("--iface", "ifaces", multiple=True,
              help="Public interface, by name or IP (repeatable; the first present wins).")
@click.option("--iface-regex", "iface_regexes", multiple=True,
              help="Regex matched against interface names and IPv4 addresses (repeatable).")
@click.option("--iface-can-reach", default=None,
              help="Use the interface the kernel routes this IP through.")
@click.option("--public-ip", default=None,
              help="IP other nodes reach this one at (default: the interface's address).")
@click.option("--subnet-file", default=defaults.SUBNET_FILE, show_default=True,
              help="Where to write subnet.env.")
@click.option("--state-dir", default=defaults.STATE_DIR, show_default=True,
              help="Local state (VTEP MAC, status for `netweft status`).")
@click.option("--ip-masq/--no-ip-masq", default=True, show_default=True,
              help="Masquerade traffic leaving the pod network.")
@click.option("--firewall", type=click.Choice(["nftables", "iptables", "none"]),
              default="nftables", show_default=True, help="How to install masquerade/forward.")
@click.option("--lease-ttl", type=click.IntRange(min=10), default=defaults.LEASE_TTL,
              show_default=True, help="Seconds an unrenewed lease lives.")
@click.option("--renew-margin", type=click.IntRange(min=1), default=3600, show_default=True,
              help="Renew this many seconds before the lease expires.")
@click.option("--reconcile-interval", type=click.FloatRange(min=0.5), default=10.0,
              show_default=True, help="Seconds between periodic dataplane checks.")
@click.option("--firewall-interval", type=click.FloatRange(min=0.5), default=5.0,
              show_default=True, help="Seconds between firewall rule checks (changes to our "
              "nftables/iptables-nft rules are also noticed at once).")
@click.option("--metrics-addr", default="127.0.0.1:9464", show_default=True,
              help="host:port for /healthz, /readyz and /metrics ('' to disable).")
@click.option("--cni-socket", default=defaults.CNI_SOCKET_PATH, show_default=True,
              help="Unix socket of the CNI request server ('' to not host it).")
@click.option("--cni-tcp-port", type=click.IntRange(0, 1023), default=defaults.CNI_TCP_PORT,
              show_default=True,
              help="Loopback port (privileged) of the bash CNI launcher's fast path (0: off).")
@click.option("--cni-token-file", default=None,
              help="Token of that fast path (root only; default: next to --cni-socket).")
@services_prefix_option
@click.option("--pod-records/--no-pod-records", default=True, show_default=True,
              help="Write a pod record to etcd for every pod the CNI server wires.")
@click.option("--cni-data-dir", default=defaults.CNI_DATA_DIR, show_default=True,
              help="The CNI plugin's dataDir (IPAM state): pod records follow what it holds.")
@click.option("--cni-network", default="netweft", show_default=True,
              help="The CNI network name (the conflist's name).")
@click.option("--cni-cache-dir", default=defaults.CNI_CACHE_DIR, show_default=True,
              help="The runtime's libcni cache dir (results/: pod names and labels).")
@click.option("--pod-sync-interval", type=click.FloatRange(min=0.5), default=10.0,
              show_default=True, help="Seconds between pod record reconcile passes.")
@click.option("--take-over-lease", is_flag=True,
              help="Take over the live lease holding this node's public IP even if another "
                   "node identity wrote it (a reinstalled node that lost --state-dir).")
@kube_subnet_options(node_name_help="This node's name: its Node object with --kube-subnet-mgr, "
                    "its pod records (default: $NODE_NAME, then the host name).")
@click.option("--cleanup-on-exit", is_flag=True,
              help="On SIGTERM/SIGINT remove the device, routes and firewall rules.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)
@click.pass_context
def daemon_cmd(ctx: click.Context, ifaces: tuple[str, ...], iface_regexes: tuple[str, ...],
               iface_can_reach: str | None, public_ip: str | None, subnet_file: str,
               state_dir: str, ip_masq: bool, firewall: str, lease_ttl: int, renew_margin: int,
               reconcile_interval: float, firewall_interval: float, metrics_addr: str,
               cni_socket: str, cni_tcp_port: int, cni_token_file: str | None,
               node_name: str | None, services_prefix: str, pod_records: bool,
               cni_data_dir: str, cni_network: str, cni_cache_dir: str,
               pod_sync_interval: float, take_over_lease: bool, kube_subnet_mgr: bool,
               kubeconfig_file: str | None, net_conf_path: str,
               cleanup_on_exit: bool, log_level: str) -> None:
    """Run the node daemon (inside the node's network namespace)."""
    from netweft.daemon import iface, kubenode
    from netweft.daemon.agent import Agent, AgentConfig, AgentError

    logging.basicConfig(level=getattr(logging, log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if renew_margin >= lease_ttl:
        fail(f"--renew-margin: {renew_margin}s must be shorter than --lease-ttl {lease_ttl}s")
    if metrics_addr and ":" not in metrics_addr:
        fail(f"--metrics-addr: {metrics_addr!r} is not host:port")
    try:
        opts = iface.parse_options(ifaces, iface_regexes, iface_can_reach, public_ip)
    except iface.IfaceError as exc:
        fail(str(exc))
        return
    if not kube_subnet_mgr:
        refuse_tls_mistakes(settings(ctx))
    else:
        check_kubeconfig_file(kubeconfig_file)
    node_name = kubenode.node_name_or_default(node_name)
    cfg = AgentConfig(
        etcd=settings(ctx), iface=opts, subnet_file=subnet_file, state_dir=state_dir,
        ip_masq=ip_masq, firewall=firewall, lease_ttl=lease_ttl, renew_margin=renew_margin,
        reconcile_interval=reconcile_interval, firewall_interval=firewall_interval,
        metrics_addr=metrics_addr or None, cni_socket=cni_socket or None,
        cni_tcp_port=cni_tcp_port, cni_token_file=cni_token_file,
        cleanup_on_exit=cleanup_on_exit, node_name=node_name,
        services_prefix=services_prefix, pod_records=pod_records and not kube_subnet_mgr,
        take_over_lease=take_over_lease, cni_data_dir=cni_data_dir, cni_network=cni_network,
        cni_cache_dir=cni_cache_dir, pod_sync_interval=pod_sync_interval,
        kube_subnet_mgr=kube_subnet_mgr, kubeconfig=kubeconfig_file, net_conf_path=net_conf_path,
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Agent(cfg).run(stop)

    try:
        asyncio.run(main())
    except AgentError as exc:
        fail(str(exc))


def register(group: click.Group) -> None:
    group.add_command(daemon_cmd)
