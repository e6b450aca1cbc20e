"""The ``CNI_*`` environment: parsing and validation (stdlib only).

Pod labels travel in ``CNI_ARGS`` as ``NETWEFT_POD_LABELS=key=value,key2=value2`` (CNI_ARGS
itself is ``;``-separated, and Kubernetes label keys/values never contain ``,`` or ``=``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from netweft.cni.spec import ERR_INVALID_ENV, CniError

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
CONTAINER_ID_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
MAX_IFNAME = 15


@dataclass(frozen=True)
class CniEnv:
    """The ``CNI_*`` environment of one invocation (CNI spec 1.1, Section 2 "Parameters":
    ``CNI_COMMAND``, ``CNI_CONTAINERID``, ``CNI_NETNS``, ``CNI_IFNAME``, ``CNI_PATH``, and
    ``CNI_ARGS`` split into ``args``)."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    path: str = ""
    args: dict[str, str] = field(default_factory=dict)
    caller_pid: int = 0  # the CNI server's verified caller: CNI_NETNS is opened as that
    #                      process sees it (cni/callerns.py); 0: as this process sees it

    @property
    def pod_namespace(self) -> str:
        """``K8S_POD_NAMESPACE`` from ``CNI_ARGS`` (set by the kubelet's runtime), or ""."""
        return self.args.get("K8S_POD_NAMESPACE", "")

    @property
    def pod_name(self) -> str:
        """``K8S_POD_NAME`` from ``CNI_ARGS``, or ""."""
        return self.args.get("K8S_POD_NAME", "")

    @property
    def pod_uid(self) -> str:
        """``K8S_POD_UID`` from ``CNI_ARGS``, or ""."""
        return self.args.get("K8S_POD_UID", "")

    @property
    def pod_labels(self) -> dict[str, str]:
        """``NETWEFT_POD_LABELS`` from ``CNI_ARGS`` (``k=v,k=v``) as a dict; empty when absent."""
        return parse_labels(self.args.get("NETWEFT_POD_LABELS", ""))

    @property
    def pod_ports(self) -> dict[str, int]:
        """``NETWEFT_PORTS`` from ``CNI_ARGS`` (named container ports) as name -> port number."""
        return parse_named_ports(self.args.get("NETWEFT_PORTS", ""))

    @property
    def requested_ip(self) -> str:
        """``IP`` from ``CNI_ARGS`` (host-local's static address request), or ""."""
        return self.args.get("IP", "")


def parse_cni_args(text: str) -> dict[str, str]:
    """``K1=V1;K2=V2`` -> dict; a pair without ``=`` is an error (code 4)."""
    out: dict[str, str] = {}
    for part in text.split(";"):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise CniError(ERR_INVALID_ENV, f"CNI_ARGS: {part!r} is not KEY=VALUE")
        out[key] = value
    return out


def parse_labels(text: str) -> dict[str, str]:
    """``k=v,k=v`` -> dict (a part without ``=`` is a key with an empty value); no error."""
    labels: dict[str, str] = {}
    for part in text.split(","):
        if not part:
            continue
        key, _, value = part.partition("=")
        labels[key] = value
    return labels


def parse_named_ports(text: str) -> dict[str, int]:
    """``http:8080,dns:53`` -> {"http": 8080, "dns": 53}: the pod's named container ports, so a
    Service's named targetPort resolves per pod; a bad item is an error (code 4)."""
    ports: dict[str, int] = {}
    for item in text.split(","):
        if not item:
            continue
        name, sep, number = item.partition(":")
        if not sep or not name or not number.isdigit() or not 1 <= int(number) <= 65535:
            raise CniError(ERR_INVALID_ENV, f"CNI_ARGS NETWEFT_PORTS: {item!r} is not name:port")
        ports[name] = int(number)
    return ports


def validate_ifname(name: str) -> None:
    """Raise :class:`CniError` ERR_INVALID_ENV (4) unless ``name`` is a usable Linux interface name
    (present, at most 15 characters, no ``/``, ``:``, whitespace or NUL, not ``.``/``..``), as the
    reference plugins' ``ValidateInterfaceName``."""
    if not name:
        raise CniError(ERR_INVALID_ENV, "CNI_IFNAME is required")
    if len(name) > MAX_IFNAME:
        raise CniError(ERR_INVALID_ENV, f"CNI_IFNAME {name!r} is longer than {MAX_IFNAME} chars")
    if name in (".", "..") or any(c in name for c in "/: \t\n\r\x00"):
        raise CniError(ERR_INVALID_ENV, f"CNI_IFNAME {name!r} is not a valid interface name")


def validate_container_id(cid: str) -> None:
    """Raise :class:`CniError` ERR_INVALID_ENV (4) unless ``cid`` is present and matches the CNI
    spec's container id form (alphanumerics, then ``_``, ``.``, ``-``)."""
    if not cid:
        raise CniError(ERR_INVALID_ENV, "CNI_CONTAINERID is required")
    if not CONTAINER_ID_RE.match(cid):
        raise CniError(ERR_INVALID_ENV,
                       f"CNI_CONTAINERID {cid!r} must match {CONTAINER_ID_RE.pattern}")


def validate_netns(path: str) -> None:
    """Raise :class:`CniError` ERR_INVALID_ENV (4) unless ``path`` is present and absolute."""
    if not path:
        raise CniError(ERR_INVALID_ENV, "CNI_NETNS is required")
    if not path.startswith("/") or "\x00" in path:
        raise CniError(ERR_INVALID_ENV, f"CNI_NETNS {path!r} must be an absolute path")


def parse_env(environ: Mapping[str, str]) -> CniEnv:
    """Validate the environment for the requested command (error code 4 when wrong)."""
    command = environ.get("CNI_COMMAND", "")
    if not command:
        raise CniError(ERR_INVALID_ENV, "CNI_COMMAND is required")
    if command not in COMMANDS:
        raise CniError(ERR_INVALID_ENV, f"CNI_COMMAND {command!r} is unknown "
                                        f"(one of {', '.join(COMMANDS)})")
    cid = environ.get("CNI_CONTAINERID", "")
    netns = environ.get("CNI_NETNS", "")
    ifname = environ.get("CNI_IFNAME", "")
    if command in ("ADD", "CHECK", "DEL"):
        validate_container_id(cid)
        validate_ifname(ifname)
        if command != "DEL" or netns:
            validate_netns(netns)
    args = parse_cni_args(environ.get("CNI_ARGS", ""))
    env = CniEnv(command, cid, netns, ifname, environ.get("CNI_PATH", ""), args)
    if command == "ADD":
        env.pod_ports  # noqa: B018 - refuse a malformed NETWEFT_PORTS before anything is wired
    return env
