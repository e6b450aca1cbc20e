"""``subnet.env``: the node's lease as environment lines, Flannel's format (stdlib only).

    FLANNEL_NETWORK=10.244.0.0/16
    FLANNEL_SUBNET=10.244.3.1/24      (first host address / subnet length)
    FLANNEL_MTU=1450
    FLANNEL_IPMASQ=true
    FLANNEL_IPV6_NETWORK=... FLANNEL_IPV6_SUBNET=...   (dual stack only)
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network

from netweft.common import defaults
from netweft.common.atomicfile import write_atomic

DEFAULT_PATH = defaults.SUBNET_FILE


class SubnetEnvError(ValueError):
    """subnet.env is missing, unreadable or malformed (the message names the file and field)."""


@dataclass(frozen=True)
class SubnetEnv:
    """The contents of Flannel's ``subnet.env`` (``FLANNEL_NETWORK``, ``FLANNEL_SUBNET`` = gateway
    address with the node subnet's length, ``FLANNEL_MTU`` in bytes, ``FLANNEL_IPMASQ``, and the
    IPv6 pair), which the CNI plugin reads."""

    network: IPv4Network | None
    subnet: IPv4Interface | None  # gateway address with the node subnet's length
    mtu: int
    ipmasq: bool
    ipv6_network: IPv6Network | None = None
    ipv6_subnet: IPv6Interface | None = None

    def render(self) -> str:
        """The file's text, ``KEY=VALUE`` lines in flanneld's order."""
        lines = []
        if self.network is not None:
            lines.append(f"FLANNEL_NETWORK={self.network}")
        if self.subnet is not None:
            lines.append(f"FLANNEL_SUBNET={self.subnet}")
        if self.ipv6_network is not None:
            lines.append(f"FLANNEL_IPV6_NETWORK={self.ipv6_network}")
        if self.ipv6_subnet is not None:
            lines.append(f"FLANNEL_IPV6_SUBNET={self.ipv6_subnet}")
        lines.append(f"FLANNEL_MTU={self.mtu}")
        lines.append(f"FLANNEL_IPMASQ={'true' if self.ipmasq else 'false'}")
        return "\n".join(lines) + "\n"


def parse(text: str, source: str = "subnet.env") -> SubnetEnv:
    """Parse ``subnet.env`` text (``KEY=VALUE`` lines, ``#`` comments, optional quotes). Raises
    :class:`SubnetEnvError`, one line naming ``source`` and the line or key."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise SubnetEnvError(f"{source}: line {raw!r} is not KEY=VALUE")
        values[key.strip()] = value.strip().strip('"')

    def get(key: str, conv, required: bool = False):  # type: ignore[no-untyped-def]
        if key not in values or values[key] == "":
            if required:
                raise SubnetEnvError(f"{source}: {key} is missing")
            return None
        try:
            return conv(values[key])
        except ValueError as exc:
            raise SubnetEnvError(f"{source}: {key}={values[key]!r} is invalid: {exc}") from None

    network = get("FLANNEL_NETWORK", lambda v: IPv4Network(v, strict=False))
    subnet = get("FLANNEL_SUBNET", IPv4Interface)
    v6net = get("FLANNEL_IPV6_NETWORK", lambda v: IPv6Network(v, strict=False))
    v6sub = get("FLANNEL_IPV6_SUBNET", IPv6Interface)
    if subnet is None and v6sub is None:
        raise SubnetEnvError(f"{source}: FLANNEL_SUBNET is missing")
    mtu = get("FLANNEL_MTU", int) or 1500
    if not 68 <= mtu <= 65535:
        raise SubnetEnvError(f"{source}: FLANNEL_MTU={mtu} is out of range 68-65535")
    ipmasq = (get("FLANNEL_IPMASQ", str) or "false").lower() in ("true", "1", "yes")
    return SubnetEnv(network, subnet, mtu, ipmasq, v6net, v6sub)


def read(path: str = DEFAULT_PATH) -> SubnetEnv:
    """Read and parse the file at ``path``. Raises :class:`SubnetEnvError` naming the file when it
    is missing, unreadable or malformed."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise SubnetEnvError(f"{path} does not exist (is the netweft daemon running?)") from None
    except OSError as exc:
        raise SubnetEnvError(f"{path}: {exc.strerror}") from None
    return parse(text, path)


def write(env: SubnetEnv, path: str = DEFAULT_PATH) -> bool:
    """Write atomically (temp file + rename); returns False when the content was already there."""
    text = env.render()
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return False
    except OSError:
        pass
    write_atomic(path, text, 0o644)
    return True
