"""netweft service proxy: Services and endpoints rendered into nftables or iptables."""
