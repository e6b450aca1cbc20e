"""Global CLI options (etcd connection) and the helpers commands use to report errors."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click
from netweft.common import defaults

if TYPE_CHECKING:
    from netweft.kv.etcd import EtcdSettings

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_SERVICES_PREFIX = defaults.SERVICES_PREFIX

DEFAULT_ENDPOINTS = defaults.ETCD_ENDPOINTS
DEFAULT_PREFIX = defaults.ETCD_PREFIX


@dataclass
class EtcdOptions:
    """The etcd options as given; turned into :class:`EtcdSettings` by :func:`settings` when a
    command first asks for them, so that a command without etcd (``netweft proxy --source
    kube``, ``netweft cni``) does not import the etcd client (issue 12: the proxy's start)."""

    endpoints: str
    prefix: str
    cafile: str | None
    certfile: str | None
    keyfile: str | None
    checked: EtcdSettings | None = None

    def resolve(self, ctx: click.Context) -> EtcdSettings:
        """The settings; a bad endpoint raises click.UsageError (exit 2), a missing,
        unreadable or non-PEM TLS file, or a key that is not the certificate's, exits 1 with
        one line naming the option and file."""
        if self.checked is not None:
            return self.checked
        from netweft.kv.etcd import EtcdSettings
        from netweft.kv.tls import EtcdConfigError, load_tls
        try:
            found = EtcdSettings.from_strings(
                self.endpoints, self.prefix, self.cafile, self.certfile, self.keyfile)
        except ValueError as exc:
            raise click.UsageError(str(exc), ctx) from None
        if found.tls and not ctx.resilient_parsing:
            try:  # a missing or broken file: one line now, not a traceback at first use
                load_tls(found.cafile, found.certfile, found.keyfile)
            except EtcdConfigError as exc:
                fail(str(exc))
        self.checked = found
        return found


def etcd_options(func: F) -> F:
    """Add --etcd-endpoints/--etcd-prefix/TLS options (env NETWEFT_ETCD_*) and store them as
    the click context object (:class:`EtcdOptions`); :func:`settings` checks them when a
    command uses etcd: a bad endpoint is a usage error (exit 2); a missing, unreadable or
    non-PEM TLS file, or a key that is not the certificate's, exits 1 with one line naming the
    option and file."""

    @click.option("--etcd-endpoints", envvar="NETWEFT_ETCD_ENDPOINTS", default=DEFAULT_ENDPOINTS,
                  show_default=True,
                  help="Comma-separated etcd client URLs, all used with failover (host "
                  "names, IPv4 or [IPv6] literals).")
    @click.option("--etcd-prefix", envvar="NETWEFT_ETCD_PREFIX", default=DEFAULT_PREFIX,
                  show_default=True, help="Key prefix of the network (Flannel's default).")
    @click.option("--etcd-cafile", envvar="NETWEFT_ETCD_CAFILE", default=None,
                  help="CA bundle to verify etcd's certificate (enables TLS).")
    @click.option("--etcd-certfile", envvar="NETWEFT_ETCD_CERTFILE", default=None,
                  help="Client certificate for etcd.")
    @click.option("--etcd-keyfile", envvar="NETWEFT_ETCD_KEYFILE", default=None,
                  help="Client key for etcd.")
    @click.pass_context
    @functools.wraps(func)
    def wrapper(ctx: click.Context, etcd_endpoints: str, etcd_prefix: str,
                etcd_cafile: str | None, etcd_certfile: str | None, etcd_keyfile: str | None,
                *args: Any, **kwargs: Any) -> Any:
        ctx.obj = EtcdOptions(etcd_endpoints, etcd_prefix, etcd_cafile, etcd_certfile,
                              etcd_keyfile)
        return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def settings(ctx: click.Context) -> EtcdSettings:
    """The etcd settings of the root command, checked on first use (see EtcdOptions.resolve)."""
    obj = ctx.find_root().obj
    assert isinstance(obj, EtcdOptions)
    return obj.resolve(ctx)


def fail(message: str, code: int = 1) -> None:
    """Print one line to stderr and exit with ``code`` (for expected failures: no traceback)."""
    click.echo(f"netweft: {message}", err=True)
    raise SystemExit(code)


def services_prefix_option(func: F) -> F:
    """``--services-prefix`` (env NETWEFT_SERVICES_PREFIX): where service and pod records live in
    etcd, apart from the Flannel network under --etcd-prefix. The command gets
    ``services_prefix: str``."""

    def check(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
        if not value.startswith("/"):
            raise click.BadParameter(f"{value!r} must start with '/'")
        return value.rstrip("/") or "/"

    return click.option(
        "--services-prefix", envvar="NETWEFT_SERVICES_PREFIX", default=DEFAULT_SERVICES_PREFIX,
        show_default=True, callback=check,
        help="etcd key prefix of service and pod records (etcd service source).")(func)


KUBE_NODE_NAME_HELP = ("This node's name: its Node object with --kube-subnet-mgr (default: "
                       "$NODE_NAME, then the host name).")


def kube_subnet_options(node_name_help: str = KUBE_NODE_NAME_HELP) -> Callable[[F], F]:
    """Flannel's Kubernetes-mode options, spelled alike by every command that reads the node's
    leases (``netweft daemon``, ``routes``, ``status``): ``--kube-subnet-mgr`` (flag),
    ``--kubeconfig-file`` (path or None), ``--net-conf-path`` (path) and ``--node-name`` (name
    or None: see :func:`netweft.daemon.kubenode.node_name_or_default`). The command gets
    ``kube_subnet_mgr: bool``, ``kubeconfig_file: str | None``, ``net_conf_path: str``,
    ``node_name: str | None``."""

    def decorate(func: F) -> F:
        for option in reversed((
            click.option("--node-name", default=None, help=node_name_help),
            click.option("--kube-subnet-mgr", is_flag=True,
                         help="Take the subnet from this Node's podCIDR and publish/watch leases "
                              "as Node annotations (Flannel's); no etcd access."),
            click.option("--kubeconfig-file", default=None,
                         help="Kubeconfig for --kube-subnet-mgr (default: in-cluster service "
                              "account, then $KUBECONFIG)."),
            click.option("--net-conf-path", default=defaults.NET_CONF_PATH, show_default=True,
                         help="The network config file read with --kube-subnet-mgr (Flannel's "
                              "format)."),
        )):
            func = option(func)
        return func

    return decorate


def check_kubeconfig_file(path: str | None) -> None:
    """Exit 1 with one line when ``--kubeconfig-file`` names a file that does not exist."""
    if path and not os.path.isfile(path):
        fail(f"--kubeconfig-file: {path} does not exist")
