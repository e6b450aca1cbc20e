"""``netweft cni install|uninstall`` and ``netweft cni-server``."""

from __future__ import annotations

import click
from netweft.cni.config import (
    DEFAULT_BRIDGE,
    DEFAULT_DATA_DIR,
    DEFAULT_LOG_FILE,
    DEFAULT_SOCKET_PATH,
    DEFAULT_SUBNET_FILE,
)
from netweft.cni.conflist import DEFAULT_CNI_VERSION
from netweft.cni.install import DEFAULT_BIN_DIR, DEFAULT_CONF_DIR
from netweft.cni.spec import SUPPORTED_VERSIONS
from netweft.cni.tcpwire import DEFAULT_TCP_PORT
from netweft.daemon.clicontext import fail


def register(group: click.Group) -> None:
    @group.group("cni")
    def cni_group() -> None:
        """Install or remove the netweft CNI plugin on this node."""

    @cni_group.command("install")
    @click.option("--bin-dir", default=DEFAULT_BIN_DIR, show_default=True)
    @click.option("--conf-dir", default=DEFAULT_CONF_DIR, show_default=True)
    @click.option("--subnet-file", default=DEFAULT_SUBNET_FILE, show_default=True)
    @click.option("--data-dir", default=DEFAULT_DATA_DIR, show_default=True,
                  help="IPAM state (host-local layout).")
    @click.option("--socket-path", default=DEFAULT_SOCKET_PATH, show_default=True,
                  help="The CNI server's unix socket.")
    @click.option("--log-file", default=DEFAULT_LOG_FILE, show_default=True)
    @click.option("--tcp-port", type=click.IntRange(0, 1023), default=DEFAULT_TCP_PORT,
                  show_default=True, help="The CNI server's loopback port for the bash "
                  "launcher's fast path (must match the server's; 0: Python launcher only).")
    @click.option("--token-file", default=None,
                  help="The server's token file (default: next to --socket-path).")
    @click.option("--name", default="netweft", show_default=True, help="Network name.")
    @click.option("--bridge", default=DEFAULT_BRIDGE, show_default=True)
    @click.option("--mtu", type=click.IntRange(68, 65535), default=None,
                  help="Pod MTU (default: FLANNEL_MTU from the subnet file).")
    @click.option("--ip-masq/--no-ip-masq", default=None,
                  help="Masquerade pod traffic leaving the cluster network "
                       "(default: not FLANNEL_IPMASQ).")
    @click.option("--cni-version", type=click.Choice(SUPPORTED_VERSIONS),
                  default=DEFAULT_CNI_VERSION, show_default=True,
                  help="The conflist's cniVersion, for runtimes that do not read cniVersions "
                       "(podman 4, containerd 1.6 know results up to 1.0.0); cniVersions lists "
                       "every version the whole chain supports.")
    @click.option("--portmap/--no-portmap", default=True, show_default=True,
                  help="Chain the reference portmap plugin (hostPort, podman -p), as Flannel "
                       "does; copied into --bin-dir from /usr/lib/cni if missing there.")
    @click.option("--chain-plugin", "chain", multiple=True, metavar="JSON",
                  help="Another plugin entry to chain, as a JSON object with a \"type\" "
                       "(repeatable; in order, after portmap).")
    @click.option("--replace-chain", is_flag=True,
                  help="Drop the plugins chained into an existing conflist (default: keep "
                       "them).")
    def install_cmd(bin_dir: str, conf_dir: str, subnet_file: str, data_dir: str,
                    socket_path: str, log_file: str, tcp_port: int, token_file: str | None,
                    name: str, bridge: str, mtu: int | None, ip_masq: bool | None,
                    cni_version: str, portmap: bool, chain: tuple[str, ...],
                    replace_chain: bool) -> None:
        """Write the netweft executable and 10-netweft.conflist (atomically)."""
        import json

        from netweft.cni.conflist import ConflistError
        from netweft.cni.install import install

        entries = []
        for i, text in enumerate(chain, 1):
            try:
                entries.append(json.loads(text))
            except ValueError as exc:
                fail(f"cni install: --chain-plugin #{i}: not JSON ({exc})")
                return
        try:
            done = install(bin_dir, conf_dir, name=name, bridge=bridge, subnet_file=subnet_file,
                           data_dir=data_dir, socket_path=socket_path, log_file=log_file,
                           mtu=mtu, ip_masq=ip_masq, tcp_port=tcp_port,
                           token_file=token_file, cni_version=cni_version, portmap=portmap,
                           chain=entries, replace_chain=replace_chain)
        except ConflistError as exc:
            fail(f"cni install: {exc}")
            return
        except OSError as exc:
            fail(f"cni install: {exc.filename or ''}: {exc.strerror or exc}")
            return
        for note in done.notes:
            click.echo(f"note: {note}")
        click.echo(f"installed {done.executable}")
        click.echo(f"installed {done.conflist}")

    @cni_group.command("uninstall")
    @click.option("--bin-dir", default=DEFAULT_BIN_DIR, show_default=True)
    @click.option("--conf-dir", default=DEFAULT_CONF_DIR, show_default=True)
    def uninstall_cmd(bin_dir: str, conf_dir: str) -> None:
        """Remove the netweft executable and conflist."""
        from netweft.cni.install import uninstall

        for path in uninstall(bin_dir, conf_dir):
            click.echo(f"removed {path}")

    @group.command("cni-server")
    @click.option("--socket-path", default=DEFAULT_SOCKET_PATH, show_default=True)
    @click.option("--log-file", default=DEFAULT_LOG_FILE, show_default=True,
                  help="Log for requests whose config names no logFile.")
    @click.option("--tcp-port", type=click.IntRange(0, 1023), default=DEFAULT_TCP_PORT,
                  show_default=True, help="Also listen on 127.0.0.1:PORT (privileged) for the "
                  "bash launcher, authenticated by a token file (0: off).")
    @click.option("--token-file", default=None,
                  help="Where the token is written, mode 0600 (default: next to the socket).")
    def cni_server_cmd(socket_path: str, log_file: str, tcp_port: int,
                       token_file: str | None) -> None:
        """Serve CNI requests from the netweft executable on a unix socket (0600, root) and
        on a loopback TCP port (token, root only)."""
        from netweft.cni.server import main

        argv = ["--socket-path", socket_path, "--log-file", log_file, "--tcp-port", str(tcp_port)]
        main(argv + (["--token-file", token_file] if token_file else []))
