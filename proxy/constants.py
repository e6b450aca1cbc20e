"""Numbers and names the proxy's dataplane shares with the rest of netweft.

MASQUERADE_MARK is the packet-mark bit the proxy sets on connections that must be source-NATed
(hairpin: a pod reaching itself through its service; off-cluster clients of a ClusterIP; every
client of an external frontend with externalTrafficPolicy Cluster). The proxy's own postrouting
chain masquerades packets carrying the bit and clears it (so an encapsulated copy does not carry
it on). The daemon's masquerade chain must leave such packets alone: its first rule should be
``meta mark & 0x4000 == 0x4000 return`` (iptables: ``-m mark --mark 0x4000/0x4000 -j RETURN``).
The value is kube-proxy's, so the two never disagree on a node that moved from one to the other.
"""

from __future__ import annotations

MASQUERADE_MARK = 0x4000

NFT_TABLE = "netweft-proxy"           # table ip netweft-proxy

HEALTHZ_PORT = 10256                  # /healthz and /metrics, like kube-proxy's healthz port
