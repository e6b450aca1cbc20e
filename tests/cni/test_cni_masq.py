"""``ipMasq`` (cni/masq.py) as typed transactions applied to the in-memory nftables
(tests/support/fake_nft.py): the set holds exactly the pods, the chain one rule, removal is
idempotent. The kernel path is covered by tests/cni/test_cni_wiring.py (real nft in a namespace)."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

from netweft.backends.nft.tx import Hook
from netweft.cni import masq
from support.fake_nft import FakeNft  # noqa: E402

NET = "pods"
V4 = ip_network("10.244.0.0/16")


def test_add_puts_pods_in_the_set_behind_one_masquerade_rule() -> None:
    nft = FakeNft()
    masq.add(NET, V4, [ip_address("10.244.1.2"), ip_address("fd00::2")], nft=nft)
    masq.add(NET, V4, [ip_address("10.244.1.3")], nft=nft)
    table = nft.table(f"ip {masq.TABLE}")
    assert set(table.elements[masq.set_name(NET)]) == {"10.244.1.2", "10.244.1.3"}
    chain = table.chains[masq.chain_name(NET)]
    assert chain.hook == Hook("nat", "postrouting", "srcnat")
    assert chain.rules == [f"ip saddr @{masq.set_name(NET)} ip daddr != 10.244.0.0/16 "
                           "ip daddr != 224.0.0.0/4 masquerade"]  # flushed, never duplicated
    assert f"ip6 {masq.TABLE}" not in nft.tables  # the v6 pod is outside a v4 cluster


def test_remove_forgets_pods_and_is_fine_when_nothing_was_there() -> None:
    nft = FakeNft()
    masq.remove(NET, [ip_address("10.244.1.2"), ip_address("fd00::2")], nft=nft)
    masq.add(NET, V4, [ip_address("10.244.1.2"), ip_address("10.244.1.3")], nft=nft)
    masq.remove(NET, [ip_address("10.244.1.2")], nft=nft)
    assert set(nft.table(f"ip {masq.TABLE}").elements[masq.set_name(NET)]) == {"10.244.1.3"}
    assert nft.table(f"ip6 {masq.TABLE}").elements[masq.set_name(NET)] == {}


def test_add_renders_the_statements_the_plugin_always_loaded() -> None:
    (tx,) = masq.add_transactions(NET, V4, [ip_address("10.244.1.2")])
    s, c = masq.set_name(NET), masq.chain_name(NET)
    assert tx.render().splitlines() == [
        f"add table ip {masq.TABLE}",
        f"add set ip {masq.TABLE} {s} {{ type ipv4_addr; }}",
        f"add chain ip {masq.TABLE} {c} "
        "{ type nat hook postrouting priority srcnat; policy accept; }",
        f"flush chain ip {masq.TABLE} {c}",
        f"add rule ip {masq.TABLE} {c} ip saddr @{s} ip daddr != 10.244.0.0/16 "
        "ip daddr != 224.0.0.0/4 masquerade",
        f"add element ip {masq.TABLE} {s} {{ 10.244.1.2 }}",
    ]
