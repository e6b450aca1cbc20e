"""The ``netweft`` command line: one click group; each area adds its commands from
``daemon/commands/<area>.py`` (a ``register(group)`` function per module)."""

from __future__ import annotations

import importlib
import sys

import click
from netweft.daemon.clicontext import etcd_options

# Each module registers its commands on the main group. Order is the order of `netweft --help`.
COMMAND_MODULES = [
    "netweft.daemon.commands.config",
    "netweft.daemon.commands.leases",
    "netweft.daemon.commands.daemon",
    "netweft.daemon.commands.inspect",
    "netweft.daemon.commands.proxy",
    "netweft.daemon.commands.service",
    "netweft.daemon.commands.cni",
    "netweft.daemon.commands.lab",
]


CONTEXT = {"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "NETWEFT"}


@click.group(context_settings=CONTEXT)
@etcd_options
def main() -> None:
    """netweft: a Flannel-compatible pod network overlay, CNI plugin and service proxy."""


for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(main)


def run() -> None:  # pragma: no cover - console entry for `python -m netweft.daemon.cli`
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
