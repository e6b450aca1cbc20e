"""``netweft cni install|uninstall`` and ``netweft cni-server``."""

from __future__ import annotations

import click

from cni.config import (
    DEFAULT_BRIDGE,
    DEFAULT_DATA_DIR,
    DEFAULT_LOG_FILE,
    DEFAULT_SOCKET_PATH,
    DEFAULT_SUBNET_FILE,
)
from cni.install import DEFAULT_BIN_DIR, DEFAULT_CONF_DIR
from daemon.clicontext import fail


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
    @click.option("--name", default="netweft", show_default=True, help="Network name.")
    @click.option("--bridge", default=DEFAULT_BRIDGE, show_default=True)
    @click.option("--mtu", type=click.IntRange(68, 65535), default=None,
                  help="Pod MTU (default: FLANNEL_MTU from the subnet file).")
    @click.option("--ip-masq/--no-ip-masq", default=None,
                  help="Masquerade pod traffic leaving the cluster network "
                       "(default: not FLANNEL_IPMASQ).")
    def install_cmd(bin_dir: str, conf_dir: str, subnet_file: str, data_dir: str,
                    socket_path: str, log_file: str, name: str, bridge: str, mtu: int | None,
                    ip_masq: bool | None) -> None:
        """Write the netweft executable and 10-netweft.conflist (atomically)."""
        from cni.install import install

        try:
            done = install(bin_dir, conf_dir, name=name, bridge=bridge, subnet_file=subnet_file,
                           data_dir=data_dir, socket_path=socket_path, log_file=log_file,
                           mtu=mtu, ip_masq=ip_masq)
        except OSError as exc:
            fail(f"cni install: {exc.filename or ''}: {exc.strerror or exc}")
            return
        click.echo(f"installed {done.executable}")
        click.echo(f"installed {done.conflist}")

    @cni_group.command("uninstall")
    @click.option("--bin-dir", default=DEFAULT_BIN_DIR, show_default=True)
    @click.option("--conf-dir", default=DEFAULT_CONF_DIR, show_default=True)
    def uninstall_cmd(bin_dir: str, conf_dir: str) -> None:
        """Remove the netweft executable and conflist."""
        from cni.install import uninstall

        for path in uninstall(bin_dir, conf_dir):
            click.echo(f"removed {path}")

    @group.command("cni-server")
    @click.option("--socket-path", default=DEFAULT_SOCKET_PATH, show_default=True)
    @click.option("--log-file", default=DEFAULT_LOG_FILE, show_default=True,
                  help="Log for requests whose config names no logFile.")
    def cni_server_cmd(socket_path: str, log_file: str) -> None:
        """Serve CNI requests from the netweft executable on a unix socket (0600, root)."""
        from cni.server import main

        main(["--socket-path", socket_path, "--log-file", log_file])
