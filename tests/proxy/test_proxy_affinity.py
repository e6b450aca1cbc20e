"""Carrying session-affinity clients over a full nftables reload (pure: the JSON nft 1.0.6
prints for ``nft -j list sets``, and the commands that put the clients back)."""

from __future__ import annotations

import pytest
from netweft.backends.nft.tx import Transaction
from netweft.proxy.affinity import AffinityEntry, carry_elements, parse_affinity_sets

LISTING = """{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
 {"set": {"family": "ip", "name": "hairpin", "table": "netweft-proxy", "type": ["ipv4_addr",
  "ipv4_addr"], "handle": 5, "elem": [{"concat": ["10.244.1.2", "10.244.1.2"]}]}},
 {"set": {"family": "ip", "name": "aff-abc-1", "table": "netweft-proxy", "type": "ipv4_addr",
  "handle": 9, "flags": ["timeout"], "timeout": 600,
  "elem": [{"elem": {"val": "192.0.2.1", "expires": 299}},
           {"elem": {"val": "192.0.2.2", "expires": 0}}]}},
 {"set": {"family": "ip", "name": "aff-abc-2", "table": "netweft-proxy", "type": "ipv4_addr",
  "handle": 10, "flags": ["timeout"], "timeout": 600}}]}"""


def test_parse_keeps_only_affinity_sets_and_clients_with_time_left() -> None:
    assert parse_affinity_sets(LISTING) == {
        "aff-abc-1": (AffinityEntry("192.0.2.1", 299),), "aff-abc-2": ()}


def test_parse_refuses_what_is_not_an_nft_listing() -> None:
    with pytest.raises(ValueError):
        parse_affinity_sets('{"sets": []}')


def test_carry_puts_clients_back_with_their_remaining_time_into_sets_still_wanted() -> None:
    current = {"aff-abc-1": (AffinityEntry("192.0.2.1", 299), AffinityEntry("192.0.2.3", 900)),
               "aff-gone-1": (AffinityEntry("192.0.2.1", 10),)}
    tx = Transaction("ip", "netweft-proxy")
    for name, items in carry_elements({"aff-abc-1": 600, "aff-new-1": 30}, current).items():
        tx.add_elements(name, items)
    assert tx.render().splitlines() == [
        "add element ip netweft-proxy aff-abc-1 { 192.0.2.1 timeout 600s expires 299s, "
        "192.0.2.3 timeout 600s expires 600s }"]
