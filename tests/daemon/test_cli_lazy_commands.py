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


def test_daemon_imports_neither_pyroute2_nor_prometheus_client_before_a_scrape() -> None:
    """What ``netweft daemon`` imports to run (the command, the agent, the CNI host, the public
    side) and a pass's metrics leave out pyroute2 (~10 MiB: only CNI CHECK uses it) and
    prometheus_client (4.4 MiB with http.server, email, urllib: loaded at the first /metrics
    scrape), so the daemon's RSS compares with flanneld's (issue 12)."""
    code = ("import netweft.daemon.commands.daemon, netweft.daemon.agent\n"
            "import netweft.daemon.cnihost, netweft.daemon.iface\n"
            "from netweft.daemon.metrics import daemon_metrics\n"
            "m = daemon_metrics()\n"
            "m.observe('netweft_reconcile_duration_seconds', 0.01)\n"
            "m.inc('netweft_reconcile_runs_total')\n")
    assert loaded_by(code, ("pyroute2", "prometheus_client", "http.server", "sqlite3")) == []
    assert "prometheus_client" in loaded_by(code + "m.render()\n", ("prometheus_client",))
