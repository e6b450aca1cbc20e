"""Reading ``nft monitor`` (pure: lines as nft 1.0.6 prints them): which finished transactions
touched the proxy's table, and by which process."""

from __future__ import annotations

from netweft.proxy.nft_monitor import MonitorParser

TABLE = "ip netweft-proxy"


def feed(lines: str) -> list[int]:
    parser = MonitorParser(TABLE)
    return [pid for ln in lines.strip().splitlines()
            if (pid := parser.feed(ln.strip())) is not None]


def test_transactions_on_the_table_report_their_process() -> None:
    assert feed("""
        add table ip netweft-proxy
        add chain ip netweft-proxy services
        add element ip netweft-proxy backends-tcp { 10.96.0.1 . 80 . 0 : 10.244.1.2 . 8080 }
        # new generation 24 by process 26129 (python3)
        delete rule ip netweft-proxy services handle 3
        # new generation 25 by process 26146 (nft)
        delete set ip netweft-proxy hairpin
        delete chain ip netweft-proxy services
        delete table ip netweft-proxy
        # new generation 26 by process 26158 (nft)
    """) == [26129, 26146, 26158]


def test_other_tables_and_families_are_ignored() -> None:
    assert feed("""
        add table ip netweft-proxy-other
        delete rule ip6 netweft-proxy services handle 3
        delete table inet netweft-proxy
        add rule ip nat POSTROUTING masquerade
        # new generation 7 by process 100 (nft)
        delete table ip netweft-proxy
        # new generation 8 by process 101 (nft)
        # new generation 9 by process 102 (iptables)
    """) == [101]


def test_this_machine_runs_the_tests_in_the_host_pid_namespace() -> None:
    """The monitor attributes transactions by host pid; the kernel tests rely on running there
    (a proxy in a container's pid namespace falls back to the periodic resync)."""
    from netweft.proxy.nft_monitor import in_initial_pid_namespace
    assert in_initial_pid_namespace()
