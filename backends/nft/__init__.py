"""netweft.nft: typed nftables objects, one transaction that renders them (``tx``), and the one
applier that hands a transaction to the kernel (``applier``: libnftables or ``nft -f -``).

Used by the service proxy (its whole table), the daemon's masquerade/forward table
(``daemon/firewall.py``) and the CNI ``ipMasq`` table (``cni/masq.py``); tests apply the same
transactions to the in-memory fake (``tests/fake_nft.py``), in the manner of knftables.
Stdlib only: every room may import it. The folder sits under ``backends/`` only because the
repository's top-level folders are fixed; it installs as its own package.
"""
