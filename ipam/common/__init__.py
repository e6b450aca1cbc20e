"""Small pieces every room shares (issue 10 item 6): the atomic file writer (``atomicfile``) and
the defaults each defined once (``defaults``). Installs as ``netweft.common``; imports only the
standard library, so cni, ipam, backends, proxy and daemon may all import it (the folder sits under
ipam/ only because the repository's top-level folders are fixed)."""
