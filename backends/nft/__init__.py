"""netweft.backends.nft: typed nftables objects, one transaction that renders them (``tx``), and
the one applier that hands a transaction to the kernel (``applier``: libnftables or ``nft -f -``).

Used by the service proxy (its whole table), the daemon's masquerade/forward table
(``daemon/firewall.py``) and the CNI ``ipMasq`` table (``cni/masq.py``); tests apply the same
transactions to the in-memory fake (``tests/support/fake_nft.py``), in the manner of knftables.
Stdlib only, so every room may import it (importing it runs only ``netweft/backends/__init__``,
a docstring). It is a plain sub-package: the CNI plugin's in-process launcher maps ``netweft``
onto the source folders and finds nothing that is mapped elsewhere.
"""
