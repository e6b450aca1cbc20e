"""netweft dataplane backends (vxlan, host-gw) over pyroute2."""
