"""The ``netweft`` command line: one click group; each area adds its commands from
``daemon/commands/<area>.py`` (a ``register(group)`` function per module).

The command modules are imported lazily, only the one whose command is run (click's documented
"lazily loading subcommands" pattern): ``netweft proxy`` does not pay for the etcd client, the
lab or the CNI installer before its first sync, and ``netweft daemon`` does not import the lab,
the proxy or the service commands (issue 12: the proxy's restart time, the daemon's RSS beside
flanneld)."""

from __future__ import annotations

import importlib
import sys

import click
from netweft.daemon.clicontext import etcd_options

# command name -> the module that registers it (`netweft --help` lists them sorted, as click does).
COMMANDS = {
    "config": "netweft.daemon.commands.config",
    "leases": "netweft.daemon.commands.leases",
    "daemon": "netweft.daemon.commands.daemon",
    "routes": "netweft.daemon.commands.inspect",
    "status": "netweft.daemon.commands.inspect",
    "proxy": "netweft.daemon.commands.proxy",
    "service": "netweft.daemon.commands.service",
    "cni": "netweft.daemon.commands.cni",
    "cni-server": "netweft.daemon.commands.cni",
    "lab": "netweft.daemon.commands.lab",
}
COMMAND_MODULES = list(dict.fromkeys(COMMANDS.values()))

CONTEXT = {"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "NETWEFT"}


def module_commands(module: str) -> dict[str, click.Command]:
    """The commands ``module``'s ``register(group)`` adds (name -> command)."""
    scratch = click.Group()
    importlib.import_module(module).register(scratch)
    return dict(scratch.commands)


class LazyGroup(click.Group):
    """A group whose subcommands are imported when looked up (see COMMANDS)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if module is None:
            return None
        command = module_commands(module).get(cmd_name)
        if command is None:
            raise RuntimeError(f"{module} did not register the command {cmd_name!r}")
        return command


@click.group(cls=LazyGroup, context_settings=CONTEXT)
@etcd_options
def main() -> None:
    """netweft: a Flannel-compatible pod network overlay, CNI plugin and service proxy."""


def run() -> None:  # pragma: no cover - console entry for `python -m netweft.daemon.cli`
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
