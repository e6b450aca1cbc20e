"""The daemon's kernel notice watchers against the real kernel: rtnetlink (routes, neighbours,
links, addresses) and nftables change notices, read in a namespace of the test's own."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable

from netweft.backends.base import Watched
from netweft.daemon import nftwatch, nlwatch
from support.polling import poll_until


def sh(ns: str, *cmd: str, stdin: str | None = None) -> None:
    subprocess.run(["ip", "netns", "exec", ns, *cmd], input=stdin, text=True, check=True,
                   capture_output=True)


def collect(sock: socket.socket, parse: Callable[[bytes], list], settle: float = 0.2) -> list:
    time.sleep(settle)
    datagrams, overrun = nlwatch.drain(sock)
    assert not overrun
    return [n for d in datagrams for n in parse(d)]


def open_in(ns: str, opener: Callable[[str], socket.socket]) -> socket.socket:
    """Open a watcher socket in ``ns`` from a throwaway thread (setns is per thread)."""
    out: list[socket.socket] = []
    t = threading.Thread(target=lambda: out.append(opener(ns)))
    t.start()
    t.join()
    return out[0]


def test_every_queued_rtnetlink_notice_is_read_at_one_wake_up(netns_factory) -> None:
    ns = netns_factory("nlw")
    sock = open_in(ns, nlwatch.open_socket)
    try:
        sh(ns, "ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        sh(ns, "ip", "link", "set", "v0", "up")
        collect(sock, nlwatch.parse)  # link creation notices: not what this test looks at
        batch = "".join(f"route add 10.9.{i}.0/24 dev v0 proto 78\n" for i in range(5))
        batch += "".join(f"route del 10.9.{i}.0/24 dev v0\n" for i in range(5))
        batch += "route add 10.8.0.0/24 dev v0\nroute del 10.8.0.0/24 dev v0\n"
        batch += "neigh add 10.9.9.9 lladdr 02:00:00:00:00:09 dev v0 nud permanent\n"
        batch += "neigh del 10.9.9.9 dev v0\naddr add 10.7.0.1/32 dev v0\n"
        sh(ns, "ip", "-batch", "-", stdin=batch)
        notices = collect(sock, nlwatch.parse)
    finally:
        sock.close()
    dels = [n for n in notices if n.type == nlwatch.RTM_DELROUTE]
    assert len(dels) == 6 and sum(n.proto == 78 for n in dels) == 5
    neigh = [n for n in notices if n.type == nlwatch.RTM_DELNEIGH]
    assert len(neigh) == 1 and neigh[0].index is not None
    assert any(n.type == nlwatch.RTM_NEWADDR and n.index == neigh[0].index for n in notices)
    w = Watched("flannel.1", neigh[0].index, neigh[0].index, 1)
    assert nlwatch.relevant(neigh[0], w)
    assert [nlwatch.relevant(n, w) for n in dels].count(True) == 5
    assert not nlwatch.relevant(neigh[0], Watched("flannel.1", 99, 99, 1))


def test_link_deletion_and_change_of_a_watched_device_are_relevant(netns_factory) -> None:
    ns = netns_factory("nlw")
    sh(ns, "ip", "link", "add", "flannel.1", "type", "veth", "peer", "name", "v1")
    idx = int(subprocess.run(["ip", "netns", "exec", ns, "cat",
                              "/sys/class/net/flannel.1/ifindex"], capture_output=True,
                             text=True).stdout or 0)
    sock = open_in(ns, nlwatch.open_socket)
    try:
        sh(ns, "ip", "link", "set", "flannel.1", "address", "02:00:00:00:00:aa")
        changed = collect(sock, nlwatch.parse)
        sh(ns, "ip", "link", "del", "flannel.1")
        deleted = collect(sock, nlwatch.parse)
    finally:
        sock.close()
    w = Watched("flannel.1", idx or None, idx or None, None)
    assert any(n.type == nlwatch.RTM_NEWLINK and nlwatch.relevant(n, w) for n in changed)
    assert any(n.type == nlwatch.RTM_DELLINK and n.name == "flannel.1" for n in deleted)
    assert any(nlwatch.relevant(n, Watched("flannel.1", None, None, None)) for n in deleted)


def test_nftables_notices_name_the_table_they_touch(netns_factory) -> None:
    ns = netns_factory("nftw")
    sock = open_in(ns, nftwatch.open_socket)
    try:
        sh(ns, "nft", "-f", "-", stdin="table ip other {\n chain c {\n }\n}\n"
           "table ip netweft {\n chain forward {\n type filter hook forward priority 0;\n }\n}\n")
        created = collect(sock, nftwatch.parse)
        sh(ns, "nft", "delete", "table", "ip", "netweft")
        deleted = collect(sock, nftwatch.parse)
        sh(ns, "nft", "add", "rule", "ip", "other", "c", "accept")
        other = collect(sock, nftwatch.parse)
    finally:
        sock.close()
    assert (2, "netweft") in created and (2, "other") in created
    assert set(deleted) == {(2, "netweft")}
    assert set(other) == {(2, "other")}


def test_nft_watcher_pokes_for_its_tables_only(netns_factory) -> None:
    ns = netns_factory("nftw")
    pokes: list[float] = []
    watcher = nftwatch.NftWatcher(ns, [(2, "netweft")], lambda: pokes.append(time.monotonic()))
    watcher.start()
    try:
        time.sleep(0.3)  # the thread has entered the namespace and joined the group
        sh(ns, "nft", "add", "table", "ip", "other")
        time.sleep(0.3)
        assert pokes == []
        sh(ns, "nft", "add", "table", "ip", "netweft")
        assert poll_until(lambda: pokes, timeout=2, interval=0.01)
    finally:
        watcher.stop()


def test_stop_wakes_a_watcher_waiting_on_a_silent_socket() -> None:
    """The watcher waits for notices without a timeout; stop() wakes it (restart time: the
    half-second select timeout it replaced is measured by bench/restart.py, not here)."""
    quiet, _peer = socket.socketpair()
    quiet.setblocking(False)
    pokes: list[int] = []
    watcher = nlwatch.SocketWatcher("test-watcher", lambda: quiet, lambda _d: True,
                                    lambda: pokes.append(1))
    watcher.start()
    watcher.stop()
    assert not watcher._thread.is_alive()
    assert pokes == []
    assert quiet.fileno() == -1      # the thread closed its socket on the way out
    _peer.close()
