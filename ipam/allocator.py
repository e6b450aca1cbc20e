"""Node-level pod IP allocator, on-disk compatible with the reference ``host-local`` IPAM plugin.

Layout in ``<data_dir>/<network>/``: one file per allocated address, named by the address, holding
``<container id>\\r\\n<ifname>``; ``last_reserved_ip.<range index>`` remembers where round-robin
allocation continues. Every operation holds ``flock`` on the directory itself (what host-local
locks), so concurrent plugin processes, server threads and host-local never hand out an address
twice. The network and broadcast addresses and the gateway are never handed out.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_address,
)

IPAddress = IPv4Address | IPv6Address
IPInterface = IPv4Interface | IPv6Interface
LAST_RESERVED = "last_reserved_ip."
LINE_BREAK = "\r\n"


class AllocatorError(Exception):
    """Base class; ``str(exc)`` is one line a person can act on."""


class RangeExhausted(AllocatorError):
    """Every usable address of the range is held (CNI error 100, ERR_NO_FREE_IP)."""


class RequestedIPUnavailable(AllocatorError):
    """The address asked for (``CNI_ARGS`` IP=, runtimeConfig ``ips``) is held by another container
    or lies outside the ranges (CNI error 101)."""


class StoreError(AllocatorError):
    """The data directory cannot be read or written."""


@dataclass(frozen=True)
class IPRange:
    """Addresses of ``subnet`` between ``start`` and ``end`` (inclusive), minus ``gateway``."""

    subnet: IPv4Network | IPv6Network
    gateway: IPAddress | None = None
    start: IPAddress | None = None
    end: IPAddress | None = None

    @property
    def first(self) -> IPAddress:
        """The first address handed out: ``start``, else the subnet's first host address (the
        network address skipped when the subnet has more than two addresses, as host-local)."""
        if self.start is not None:
            return self.start
        return self.subnet.network_address + (1 if self.subnet.num_addresses > 2 else 0)

    @property
    def last(self) -> IPAddress:
        """The last address handed out: ``end``, else the subnet's last address (IPv4: the broadcast
        address skipped when the subnet has more than two addresses, as host-local)."""
        if self.end is not None:
            return self.end
        if self.subnet.version == 4 and self.subnet.num_addresses > 2:
            return self.subnet.broadcast_address - 1
        return self.subnet.broadcast_address

    def usable(self, ip: IPAddress) -> bool:
        """Whether ``ip`` may be handed out from this range: same family, between :attr:`first` and
        :attr:`last`, in the subnet, not the gateway."""
        return (ip.version == self.subnet.version and self.first <= ip <= self.last
                and ip != self.gateway and ip in self.subnet)

    def size(self) -> int:
        """How many addresses the range hands out (first..last, minus the gateway)."""
        n = int(self.last) - int(self.first) + 1
        return n - (1 if self.gateway is not None and self.first <= self.gateway <= self.last
                    else 0)

    def candidates(self, after: IPAddress | None) -> Iterator[IPAddress]:
        """Every usable address once, starting right after ``after`` and wrapping around."""
        first, last = int(self.first), int(self.last)
        cls = type(self.first)
        begin = first
        if (after is not None and after.version == self.subnet.version
                and first <= int(after) <= last):
            begin = int(after) + 1 if int(after) < last else first
        count = last - first + 1
        for i in range(count):
            value = begin + i
            if value > last:
                value -= count
            ip = cls(value)
            if ip != self.gateway:
                yield ip

    def interface(self, ip: IPAddress) -> IPInterface:
        """``ip`` with the subnet's prefix length (``10.244.1.5/24``), as a CNI result's
        ``address``."""
        if ip.version == 4:
            return IPv4Interface(f"{ip}/{self.subnet.prefixlen}")
        return IPv6Interface(f"{ip}/{self.subnet.prefixlen}")


@dataclass(frozen=True)
class Allocation:
    """One held address: the file ``<ip>`` holding ``<container id>\r\n<ifname>`` (host-local's
    record)."""

    ip: IPAddress
    container_id: str
    ifname: str


class NodeAllocator:
    """Allocate pod addresses from the node's ranges (one address per range: v4 and/or v6)."""

    def __init__(self, data_dir: str, network: str, ranges: Iterable[IPRange] = ()) -> None:
        self.dir = os.path.join(data_dir, network)
        self.ranges = list(ranges)

    # -- locking and files ------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold ``flock`` on the data directory (host-local's lock) for the block; makes the
        directory (mode 0755) if needed. Raises :class:`StoreError` naming the directory."""
        try:
            os.makedirs(self.dir, mode=0o755, exist_ok=True)
            fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise StoreError(f"IPAM data dir {self.dir}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _read(self, name: str) -> tuple[str, str] | None:
        try:
            with open(os.path.join(self.dir, name), encoding="utf-8", newline="") as f:
                text = f.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"IPAM file {self.dir}/{name}: {exc.strerror}") from None
        cid, _, ifname = text.strip().partition(LINE_BREAK)
        return cid.strip(), ifname.strip()

    def _entries(self) -> list[Allocation]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StoreError(f"IPAM data dir {self.dir}: {exc.strerror}") from None
        out = []
        for name in names:
            try:
                ip = ip_address(name)
            except ValueError:
                continue
            owner = self._read(name)
            if owner is not None:
                out.append(Allocation(ip, owner[0], owner[1]))
        return out

    def _reserve(self, ip: IPAddress, container_id: str, ifname: str) -> bool:
        path = os.path.join(self.dir, str(ip))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise StoreError(f"IPAM file {path}: {exc.strerror}") from None
        try:
            os.write(fd, f"{container_id}{LINE_BREAK}{ifname}".encode())
        finally:
            os.close(fd)
        return True

    def _last_reserved(self, index: int) -> IPAddress | None:
        try:
            with open(os.path.join(self.dir, f"{LAST_RESERVED}{index}"), encoding="utf-8") as f:
                return ip_address(f.read().strip())
        except (OSError, ValueError):
            return None

    def _set_last_reserved(self, index: int, ip: IPAddress) -> None:
        path = os.path.join(self.dir, f"{LAST_RESERVED}{index}")
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(str(ip))
        except OSError as exc:
            raise StoreError(f"IPAM file {path}: {exc.strerror}") from None

    def _remove(self, ip: IPAddress) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.dir, str(ip)))

    # -- operations ---------------------------------------------------------------------------
    def allocate(self, container_id: str, ifname: str,
                 requested: Iterable[IPAddress] = ()) -> list[IPInterface]:
        """One address per range for (container, ifname); the existing ones if it has them.
        Raises :class:`RangeExhausted`, :class:`RequestedIPUnavailable`, :class:`StoreError`,
        or :class:`AllocatorError` without ranges."""
        if not self.ranges:
            raise AllocatorError("no IP ranges configured for the node")
        wanted: dict[int, IPAddress] = {}
        for ip in requested:
            for index, rng in enumerate(self.ranges):
                if ip.version == rng.subnet.version and ip in rng.subnet:
                    if not rng.usable(ip):
                        raise RequestedIPUnavailable(
                            f"requested IP {ip} is the network, broadcast or gateway address "
                            f"of {rng.subnet} or outside its range")
                    wanted[index] = ip
                    break
            else:
                raise RequestedIPUnavailable(
                    f"requested IP {ip} is outside the node's subnets "
                    f"({', '.join(str(r.subnet) for r in self.ranges)})")
        with self.locked():
            mine = [a.ip for a in self._entries()
                    if a.container_id == container_id and a.ifname == ifname]
            out: list[IPInterface] = []
            made: list[IPAddress] = []
            try:
                for index, rng in enumerate(self.ranges):
                    have = next((ip for ip in mine if ip in rng.subnet), None)
                    if have is not None and (index not in wanted or wanted[index] == have):
                        out.append(rng.interface(have))
                        continue
                    if index in wanted:
                        ip = wanted[index]
                        if not self._reserve(ip, container_id, ifname):
                            owner = self._read(str(ip))
                            raise RequestedIPUnavailable(
                                f"requested IP {ip} is already allocated to container "
                                f"{owner[0] if owner else '?'}")
                    else:
                        ip = self._next_free(index, rng, container_id, ifname)
                    made.append(ip)
                    self._set_last_reserved(index, ip)
                    out.append(rng.interface(ip))
            except BaseException:
                for ip in made:
                    self._remove(ip)
                raise
            return out

    def _next_free(self, index: int, rng: IPRange, container_id: str, ifname: str) -> IPAddress:
        for ip in rng.candidates(self._last_reserved(index)):
            if self._reserve(ip, container_id, ifname):
                return ip
        raise RangeExhausted(f"no free IP address left in {rng.subnet} "
                             f"({rng.size()} usable, all allocated in {self.dir})")

    def release(self, container_id: str, ifname: str) -> list[IPAddress]:
        """Release what (container, ifname) holds; releasing nothing is fine (idempotent DEL)."""
        if not os.path.isdir(self.dir):
            return []
        with self.locked():
            gone = []
            for a in self._entries():
                if a.container_id == container_id and (a.ifname == ifname or not a.ifname):
                    self._remove(a.ip)
                    gone.append(a.ip)
            return gone

    def held_by(self, container_id: str, ifname: str) -> list[IPAddress]:
        """The addresses held for ``container_id`` on ``ifname`` (host-local's ownership key), in
        directory order. Raises :class:`StoreError`."""
        return [a.ip for a in self.allocations()
                if a.container_id == container_id and a.ifname == ifname]

    def allocations(self) -> list[Allocation]:
        """Every held address, under the lock; empty when the directory does not exist. Raises
        :class:`StoreError`."""
        if not os.path.isdir(self.dir):
            return []
        with self.locked():
            return self._entries()

    def gc(self, valid: Iterable[tuple[str, str]]) -> list[Allocation]:
        """Release every allocation whose (container id, ifname) is not in ``valid``."""
        keep = set(valid)
        if not os.path.isdir(self.dir):
            return []
        with self.locked():
            gone = []
            for a in self._entries():
                if (a.container_id, a.ifname) not in keep:
                    self._remove(a.ip)
                    gone.append(a)
            return gone

    def free_count(self) -> int:
        """How many addresses are still free over all ranges (CNI STATUS reports none free as error
        50). Raises :class:`StoreError`."""
        used = {a.ip for a in self.allocations()}
        total = 0
        for rng in self.ranges:
            total += rng.size() - sum(1 for ip in used if rng.usable(ip))
        return total

    def writable(self) -> bool:
        """Whether the data directory exists (made if needed) and is writable by us (CNI STATUS: a
        plugin that cannot record addresses is not available)."""
        try:
            os.makedirs(self.dir, mode=0o755, exist_ok=True)
        except OSError:
            return False
        return os.access(self.dir, os.W_OK)
