"""Fixtures of the daemon's tests: miniature clusters (support.nodelab) of real etcd, an
underlay and node namespaces running ``netweft daemon``."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from support.nodelab import NodeLab


@pytest.fixture
def make_lab(netns_factory: Callable[[str], str], tmp_path) -> Iterator[Callable[..., NodeLab]]:
    """``make(nodes, backend)``: a NodeLab (etcd, underlay, outside host, node namespaces)
    with the network config set (vxlan unless ``backend`` says otherwise); closed afterwards."""
    labs: list[NodeLab] = []

    def make(nodes: int = 2, backend: dict[str, object] | None = None,
             config: bool = True) -> NodeLab:
        lab = NodeLab(netns_factory("dul"), [netns_factory("dn") for _ in range(nodes)],
                      netns_factory("dout"), str(tmp_path))
        labs.append(lab)
        lab.build()
        if config:
            lab.set_config({"Network": "10.244.0.0/16", "Backend": backend or {"Type": "vxlan"}})
        return lab

    try:
        yield make
    finally:
        for lab in labs:
            lab.close()
