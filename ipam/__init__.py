"""netweft IPAM: network config, subnet leases in etcd, node pod IP allocation."""
