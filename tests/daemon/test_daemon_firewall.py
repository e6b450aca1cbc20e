"""Firewall adapters against real nft / iptables inside a namespace: idempotent, self-healing,
and never touching rules that are not netweft's."""

from __future__ import annotations

from ipaddress import IPv4Network

from netweft.daemon.firewall import FirewallSpec, IptablesFirewall, NftFirewall, Runner

SPEC = FirewallSpec(IPv4Network("10.244.0.0/16"), IPv4Network("10.244.3.0/24"))


def test_nft_table_loaded_once_repaired_and_removed_alone(netns_factory) -> None:
    run = Runner(netns_factory("dfw"))
    run(["nft", "add", "table", "ip", "other"])
    run(["nft", "add", "chain", "ip", "other", "post",
         "{ type nat hook postrouting priority 100; }"])
    run(["nft", "add", "rule", "ip", "other", "post", "ip", "saddr", "10.9.0.0/16", "masquerade"])
    fw = NftFirewall(run)
    assert fw.ensure(SPEC) is True
    assert fw.ensure(SPEC) is False  # nothing changed: nothing reloaded
    # Someone deletes one of our rules: the next check puts it back.
    listing = run(["nft", "-a", "list", "chain", "ip", "netweft", "postrouting"]).stdout
    handle = next(line.rsplit("# handle ", 1)[1] for line in listing.splitlines()
                  if "masquerade" in line)
    run(["nft", "delete", "rule", "ip", "netweft", "postrouting", "handle", handle])
    assert fw.ensure(SPEC) is True
    assert fw.ensure(SPEC) is False
    # The node's subnet changes: the table follows.
    assert fw.ensure(FirewallSpec(SPEC.network, IPv4Network("10.244.9.0/24"))) is True
    assert "10.244.9.0/24" in (fw.current() or "")
    fw.teardown()
    tables = run(["nft", "list", "tables"]).stdout
    assert "netweft" not in tables and "table ip other" in tables
    assert "10.9.0.0/16" in run(["nft", "list", "table", "ip", "other"]).stdout


def test_iptables_chains_loaded_once_repaired_and_removed_alone(netns_factory) -> None:
    run = Runner(netns_factory("dfw"))
    run(["iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "10.9.0.0/16", "-j", "MASQUERADE"])
    fw = IptablesFirewall(run)
    assert fw.ensure(SPEC) is True
    assert fw.ensure(SPEC) is False
    run(["iptables", "-t", "nat", "-D", "NETWEFT-POSTRTG", "2"])
    assert fw.ensure(SPEC) is True
    run(["iptables", "-t", "filter", "-D", "FORWARD", "-m", "comment", "--comment",
         "netweft forward", "-j", "NETWEFT-FWD"])
    assert fw.ensure(SPEC) is True
    assert fw.ensure(SPEC) is False
    # --no-ip-masq: our nat chain goes, forward stays.
    assert fw.ensure(FirewallSpec(SPEC.network, SPEC.subnet, masquerade=False)) is True
    nat = run(["iptables-save", "-t", "nat"]).stdout
    assert "NETWEFT" not in nat and "-A POSTROUTING -s 10.9.0.0/16 -j MASQUERADE" in nat
    assert "NETWEFT-FWD" in run(["iptables-save", "-t", "filter"]).stdout
    fw.teardown()
    assert "NETWEFT" not in run(["iptables-save"]).stdout
    assert "-A POSTROUTING -s 10.9.0.0/16 -j MASQUERADE" in run(["iptables-save"]).stdout
