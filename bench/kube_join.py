"""Node join in Kubernetes mode beside etcd mode, in one run: the time from a new node's subnet
appearing in the control plane to the first echo reply a pod on an existing node gets from
that subnet, p50/p99 over N joins each.

Each mode gets a 2-node lab (one pod per node, no proxy) and the hand-programmed "joiner" host
of bench/convergence.py on the underlay (its VXLAN device and route back to node1 set by hand,
so only node1's reaction is measured). A pod on node1 pings an address in the joiner's next
subnet every 2 ms (``ping -D``); then the joiner is published:

- ``--control-plane kubernetes``: a Node object is created through the real kube-apiserver with
  ``spec.podCIDR`` and the Flannel annotations the node's agent would publish (backend-type,
  backend-data with the joiner's VTEP MAC, public-ip, kube-subnet-manager); node1's
  ``netweft daemon --kube-subnet-mgr`` sees it through its Node watch;
- ``etcd``: the same subnet's lease (Flannel JSON) is put into etcd (bench/convergence.py's way).

join time = first echo reply - create/put returned (same clock: one machine). The Node (lease)
is then deleted, node1 drops the route, the next join uses a fresh subnet.

    sudo .venv/bin/python bench/kube_join.py [--joins 20] [--control-plane both|etcd|kubernetes]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from ipaddress import IPv4Network

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from convergence import (  # noqa: E402
    JOINER_IP,
    JOINER_MAC,
    Agent,
    build_joiner,
    free_subnets,
    join_once,
    percentile,
    report,
    timed_join,
)
from netweft.daemon import kubenode as kn  # noqa: E402
from netweft.daemon.lab.lab import Lab, down  # noqa: E402
from netweft.daemon.lab.topology import LabSpec  # noqa: E402


def node1_vtep_mac(lab: Lab) -> str:
    """node1's VTEP MAC from its Node's backend-data annotation."""
    with lab.api() as api:
        node = next(n for n in api.nodes() if n["metadata"]["name"] == "node1")
    return str(json.loads(node["metadata"]["annotations"][kn.BACKEND_DATA])["VtepMAC"])


def kube_join(lab: Lab, joiner_ns: str, subnet: IPv4Network, index: int,
              timeout: float) -> tuple[float, float]:
    spec = lab.topo.spec
    name = f"joiner{index}"
    data = {"VNI": spec.vni, "VtepMAC": JOINER_MAC} if spec.backend == "vxlan" else {}
    notes = {kn.KUBE_MANAGED: "true", kn.BACKEND_TYPE: spec.backend,
             kn.BACKEND_DATA: json.dumps(data, separators=(",", ":")),
             kn.PUBLIC_IP: str(JOINER_IP)}
    with lab.api() as api:
        def publish() -> tuple[float, float]:
            t0 = time.time()
            api.create_node(name, pod_cidr=str(subnet), annotations=notes)
            return t0, time.time()

        return timed_join(lab, joiner_ns, subnet, publish, lambda: api.delete_node(name),
                          timeout, src_ns=lab.pod("node1-pod1").netns)


def measure(args: argparse.Namespace, control_plane: str) -> dict[str, object]:
    prefix = f"nwkj{os.getpid() % 10000:04d}"
    spec = LabSpec(prefix=prefix, nodes=2, pods_per_node=1, backend=args.backend, proxy=False,
                   control_plane=control_plane)
    samples: list[float] = []
    started = time.monotonic()
    try:
        lab = Lab.up(spec)
        up_s = time.monotonic() - started
        subnets = free_subnets(lab, args.joins)
        if spec.kube:
            joiner_ns = build_joiner(lab, node1_vtep_mac(lab) if args.backend == "vxlan"
                                     else None)
            for i, subnet in enumerate(subnets):
                samples.append(kube_join(lab, joiner_ns, subnet, i, args.timeout)[0])
                print(f"  {control_plane} join {i + 1:2d} {subnet}: "
                      f"{samples[-1] * 1000:7.1f} ms", flush=True)
        else:
            joiner_ns = build_joiner(lab)
            agent_ = Agent.start(lab)
            try:
                for i, subnet in enumerate(subnets):
                    # from node1's pod, as in Kubernetes mode
                    samples.append(join_once(lab, agent_, joiner_ns, subnet, args.timeout,
                                             lab.pod("node1-pod1").netns)[0])
                    print(f"  {control_plane} join {i + 1:2d} {subnet}: "
                          f"{samples[-1] * 1000:7.1f} ms", flush=True)
            finally:
                agent_.stop()
    finally:
        down(prefix)
    ms = [s * 1000 for s in samples]
    return {"control_plane": control_plane, "backend": args.backend, "joins": len(ms),
            "lab_up_s": round(up_s, 1),
            "p50_ms": round(percentile(ms, 50), 1), "p99_ms": round(percentile(ms, 99), 1),
            "mean_ms": round(statistics.mean(ms), 1), "max_ms": round(max(ms), 1),
            "samples_ms": [round(m, 2) for m in ms]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--joins", type=int, default=20)
    parser.add_argument("--backend", choices=["vxlan", "host-gw"], default="vxlan")
    parser.add_argument("--control-plane", choices=["both", "etcd", "kubernetes"],
                        default="both")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("kube_join.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    modes = ["kubernetes", "etcd"] if args.control_plane == "both" else [args.control_plane]
    results = [measure(args, m) for m in modes]
    report(results, "control_plane", "node join",
           f"{args.backend}, subnet published -> first echo reply to a peer's pod",
           args.json_path)
    for r in results:
        print(f"  lab up ({r['control_plane']}): {r['lab_up_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
