"""``netweft proxy``: argument errors are one line naming the option; ``--cleanup`` removes
the proxy's rules (run inside a namespace this test creates)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from support.imports import loaded_by

GOLDEN = Path(__file__).parent / "golden" / "proxy"
NETWEFT = [sys.executable, "-m", "netweft.daemon.cli"]


def run(*args: str, netns: str | None = None) -> subprocess.CompletedProcess[str]:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    return subprocess.run([*prefix, *NETWEFT, *args], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).parents[2])


def test_bad_arguments_are_one_line(netns_factory: Callable[[str], str]) -> None:
    ns = netns_factory("pargs")  # never run the proxy in the root namespace, even to fail
    for args, field in ((["--node-ip", "127.0.0.1"], "--node-ip"),
                        (["--node-ip", "nope"], "--node-ip"),
                        (["--node-ip", "192.0.2.1", "--cluster-cidr", "10.0.0.0/99"],
                         "--cluster-cidr"),
                        (["--node-ip", "192.0.2.1", "--subnet-file", "/nonexistent"],
                         "--cluster-cidr")):
        proc = run("proxy", *args, netns=ns)
        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and field in lines[0], proc.stderr


def test_unreadable_or_malformed_kubeconfig_is_one_line(netns_factory: Callable[[str], str],
                                                        tmp_path: Path) -> None:
    ns = netns_factory("pcli")
    malformed = tmp_path / "kubeconfig"
    malformed.write_text('{"apiVersion": \n')
    for path in ("/nonexistent/kubeconfig", str(malformed)):
        proc = run("proxy", "--source", "kube", "--kubeconfig", path,
                   "--node-ip", "192.0.2.1", "--cluster-cidr", "10.244.0.0/16",
                   "--healthz-port", "0", netns=ns)
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"netweft: --kubeconfig {path}: "), \
            proc.stderr


def test_cleanup_removes_both_rulesets(netns_factory: Callable[[str], str]) -> None:
    ns = netns_factory("pclean")
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", str(GOLDEN / "catalog.nft")],
                   check=True)
    subprocess.run(["ip", "netns", "exec", ns, "iptables-restore", "-w", "--noflush",
                    str(GOLDEN / "catalog.iptables")], check=True)
    subprocess.run(["ip", "netns", "exec", ns, "iptables", "-w", "-t", "nat", "-I",
                    "PREROUTING", "-j", "NETWEFT-SERVICES"], check=True)
    common = ("--node-ip", "192.0.2.11", "--cluster-cidr", "10.244.0.0/16", "--cleanup")
    assert run("proxy", "--mode", "nftables", *common, netns=ns).returncode == 0
    assert run("proxy", "--mode", "iptables", *common, netns=ns).returncode == 0
    tables = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "tables"],
                            capture_output=True, text=True, check=True).stdout
    assert "netweft" not in tables
    saved = subprocess.run(["ip", "netns", "exec", ns, "iptables-save"], capture_output=True,
                           text=True, check=True).stdout
    assert "NETWEFT" not in saved


def test_nftables_mode_with_the_kube_source_loads_only_what_it_uses() -> None:
    """What ``netweft proxy --source kube --mode nftables`` imports before its first sync (the
    command's own imports, the dataplane, the runner, the source): no iptables renderer, no
    prometheus_client (first /metrics scrape), no etcd client, no lab (issue 12: restart
    time and RSS)."""
    code = (
        "from click.testing import CliRunner\n"
        "from netweft.daemon.cli import main\n"
        "assert CliRunner().invoke(main, ['proxy', '--help']).exit_code == 0\n"
        "from netweft.backends.nft.applier import NftError\n"
        "from netweft.proxy.conntrack import ConntrackCleaner\n"
        "from netweft.proxy.dataplane import IptablesDataplane, NftablesDataplane\n"
        "from netweft.proxy.plan import NodeContext\n"
        "from netweft.proxy.runner import ProxyRunner, RunnerOptions\n"
        "from netweft.proxy.sources.kube import KubeSource\n"
        "node = NodeContext('n', ('192.0.2.1',), ())\n"
        "ProxyRunner(node, NftablesDataplane(node), ConntrackCleaner(), RunnerOptions())\n")
    assert loaded_by(code, ("netweft.proxy.iptables", "netweft.proxy.ipt_apply",
                            "prometheus_client", "grpc", "aetcd", "netweft.kv.etcd",
                            "netweft.daemon.lab")) == []
