"""The ``netweft`` group imports a command's module only when that command runs
(daemon/cli.py LazyGroup): the map of command names to modules must match what each module's
``register(group)`` adds, and ``netweft proxy`` must not pay for the etcd client or the lab."""

from __future__ import annotations

from netweft.daemon.cli import COMMAND_MODULES, COMMANDS, main, module_commands
from support.imports import loaded_by


def test_command_map_matches_what_each_module_registers() -> None:
    registered = {name: module for module in COMMAND_MODULES
                  for name in module_commands(module)}
    assert registered == COMMANDS


def test_every_command_resolves_and_help_lists_them_sorted() -> None:
    for name in COMMANDS:
        command = main.get_command(None, name)  # type: ignore[arg-type]
        assert command is not None and command.name == name
    assert main.list_commands(None) == sorted(COMMANDS)  # type: ignore[arg-type]


def test_proxy_command_imports_neither_the_etcd_client_nor_other_commands() -> None:
    code = ("from click.testing import CliRunner\n"
            "from netweft.daemon.cli import main\n"
            "assert CliRunner().invoke(main, ['proxy', '--help']).exit_code == 0\n")
    assert loaded_by(code, ("grpc", "aetcd", "netweft.kv.etcd", "netweft.daemon.lab",
                            "netweft.daemon.commands.lab",
                            "netweft.daemon.commands.service")) == []


def test_etcd_options_are_checked_only_by_commands_that_use_etcd() -> None:
    """A bad --etcd-endpoints is a usage error (exit 2) for a command that talks to etcd, and
    does not stop one that does not (``netweft proxy --source kube``, ``netweft cni``)."""
    from click.testing import CliRunner

    runner = CliRunner()
    bad = ["--etcd-endpoints", "ftp://x"]
    assert runner.invoke(main, [*bad, "proxy", "--help"]).exit_code == 0
    used = runner.invoke(main, [*bad, "leases", "list"])
    assert used.exit_code == 2 and "--etcd-endpoints" in used.output
