"""Global CLI options (etcd connection) and the helpers commands use to report errors."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click
from netweft.common import defaults
from netweft.kv.etcd import EtcdSettings
from netweft.kv.tls import EtcdConfigError, load_tls
from netweft.proxy.records import DEFAULT_SERVICES_PREFIX

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_ENDPOINTS = defaults.ETCD_ENDPOINTS
DEFAULT_PREFIX = defaults.ETCD_PREFIX


def etcd_options(func: F) -> F:
    """Add --etcd-endpoints/--etcd-prefix/TLS options (env NETWEFT_ETCD_*) and store an
    :class:`EtcdSettings` as the click context object. A bad endpoint is a usage error (exit 2);
    a missing, unreadable or non-PEM TLS file, or a key that is not the certificate's, exits 1
    with one line naming the option and file."""

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
        try:
            ctx.obj = EtcdSettings.from_strings(
                etcd_endpoints, etcd_prefix, etcd_cafile, etcd_certfile, etcd_keyfile)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        s = ctx.obj
        if s.tls and not ctx.resilient_parsing:
            try:  # a missing or broken file: one line now, not a traceback at first use
                load_tls(s.cafile, s.certfile, s.keyfile)
            except EtcdConfigError as exc:
                fail(str(exc))
        return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def settings(ctx: click.Context) -> EtcdSettings:
    """The etcd settings of the root command."""
    obj = ctx.find_root().obj
    assert isinstance(obj, EtcdSettings)
    return obj


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
