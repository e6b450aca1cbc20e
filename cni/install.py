"""Install the plugin on a node: the ``netweft`` executable in the CNI bin dir and a
``10-netweft.conflist`` in the conf dir, each written atomically (temp file + rename).

The executable is a tiny stdlib-only launcher bound to this installation's interpreter
(``#!<python> -IS``: no site import, no environment-driven path changes) that puts this
installation's package directory on ``sys.path`` and runs :func:`netweft.cni.shim.main`.

The conflist (:mod:`cni.conflist` computes it) is one every runtime in the field accepts:
``cniVersion`` 1.0.0 by default plus the CNI 1.1 ``cniVersions`` list, and Flannel's chained
``portmap`` (copied into the bin dir when it is not there yet, as Flannel's init container
brings its binaries).
"""

from __future__ import annotations

import contextlib
import json
import os
import py_compile
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field

from netweft import cni, common
from netweft.cni.config import (
    DEFAULT_BRIDGE,
    DEFAULT_DATA_DIR,
    DEFAULT_LOG_FILE,
    DEFAULT_SOCKET_PATH,
    DEFAULT_SUBNET_FILE,
)
from netweft.cni.conflist import (
    DEFAULT_CNI_VERSION,
    PORTMAP_TYPE,
    ChainPlan,
    ConflistError,
    build_conflist,
    merge_chain,
)
from netweft.cni.tcpwire import DEFAULT_TCP_PORT, default_token_file
from netweft.common.atomicfile import copy_atomic, write_atomic

BIN_NAME = "netweft"
PY_BIN_NAME = "netweft-py"  # the Python launcher the bash one falls back to
DEFAULT_TCP_TIMEOUT = 120  # seconds the bash launcher waits for a reply before falling back
CONF_NAME = "10-netweft.conflist"
MARKER = "# netweft CNI plugin launcher"
DEFAULT_BIN_DIR = "/opt/cni/bin"
DEFAULT_CONF_DIR = "/etc/cni/net.d"
# where a reference plugin (portmap) is looked for when the bin dir has none: Debian's
# containernetworking-plugins, then the usual install location
REFERENCE_PLUGIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
LOOPBACK_TYPE = "loopback"


@dataclass(frozen=True)
class Installed:
    """What ``netweft cni install`` wrote: the executable's path, the conflist's path, and notes a
    user must know (one line each)."""

    executable: str
    conflist: str
    notes: list[str] = field(default_factory=list)  # one line each: what a user must know


def package_root() -> str:
    """The folder holding the ``cni``, ``daemon``, ``ipam`` ... package folders
    (site-packages/netweft, or the checkout in an editable install)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(cni.__file__)))


def package_path() -> list[str]:
    """The ``netweft`` package's search path for the launcher, which runs without site machinery:
    the folder holding cni/, daemon/, ... and, in an editable install from a checkout, also the
    folder holding the packages that install under their own name from a nested folder
    (``netweft.common``, ``netweft.kv``: ipam/common, ipam/kv; pyproject's package-dir)."""
    root = package_root()
    nested = os.path.dirname(os.path.dirname(os.path.abspath(common.__file__)))
    return [root] if nested == root else [root, nested]


def fallback_paths() -> list[str]:
    """Where the in-process path finds pyroute2 & co: site-packages and the plain directories
    listed in its ``.pth`` files (not the ``import`` lines: no site machinery at start-up)."""
    paths: list[str] = []
    for key in ("purelib", "platlib"):
        p = sysconfig.get_paths()[key]
        if p not in paths:
            paths.append(p)
    for site_dir in list(paths):
        with contextlib.suppress(OSError):
            for name in sorted(os.listdir(site_dir)):
                if not name.endswith(".pth"):
                    continue
                with open(os.path.join(site_dir, name), encoding="utf-8") as f:
                    for line in f:
                        line = line.strip()
                        if line and not line.startswith(("#", "import")) and os.path.isdir(line):
                            paths.append(line)
    return paths


def launcher_text(default_socket: str, default_log: str, python: str | None = None) -> str:
    """The Python launcher script (``#!<python> -IS``: isolated, no site machinery, for start-up
    time) that runs :func:`netweft.cni.shim.main` with the default socket and log file; ``python``
    defaults to this interpreter."""
    python = python or sys.executable
    return (
        f"#!{python} -IS\n"
        f"{MARKER} (written by `netweft cni install`; do not edit).\n"
        "import sys\n"
        # no site machinery under -S (an editable install's import hook never runs): make
        # `netweft` a package whose path is the folder holding cni/, daemon/, ipam/, ...
        "netweft = type(sys)('netweft')\n"
        f"netweft.__path__ = {package_path()!r}\n"
        "sys.modules['netweft'] = netweft\n"
        "from netweft.cni.shim import main\n"
        f"main({default_socket!r}, {default_log!r}, {fallback_paths()!r})\n"
    )


def bash_launcher_text(python_launcher: str, default_socket: str, default_log: str,
                       tcp_port: int, token_file: str,
                       timeout: int = DEFAULT_TCP_TIMEOUT) -> str:
    """The executable a runtime runs: ``cni/launcher.sh`` with this installation's values
    (``timeout``: seconds the launcher waits for the TCP fast path's reply)."""
    with open(os.path.join(os.path.dirname(os.path.abspath(cni.__file__)), "launcher.sh"),
              encoding="utf-8") as f:
        text = f.read()
    for key, value in (("@PY@", _sh_quote(python_launcher)), ("@PORT@", str(int(tcp_port))),
                       ("@TOKEN@", _sh_quote(token_file)), ("@SOCK@", _sh_quote(default_socket)),
                       ("@LOG@", _sh_quote(default_log)), ("@TIMEOUT@", str(int(timeout)))):
        text = text.replace(key, value)
    return text


def _sh_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def plugin_entry(options: dict[str, object]) -> dict[str, object]:
    """Our entry of the conflist: ``type`` netweft, the options, the ``ips`` capability."""
    plugin: dict[str, object] = {"type": BIN_NAME}
    plugin.update(options)
    plugin["capabilities"] = {"ips": True}
    return plugin


def plugin_versions(path: str) -> tuple[str, ...] | None:
    """``supportedVersions`` of the CNI plugin executable ``path`` (its VERSION command, as a
    runtime asks it), or None when it cannot tell."""
    try:
        proc = subprocess.run([path], input=b'{"cniVersion":"0.4.0"}',
                              env={"CNI_COMMAND": "VERSION", "PATH": os.defpath},
                              capture_output=True, timeout=10)
        info = json.loads(proc.stdout)
        versions = info.get("supportedVersions") if isinstance(info, dict) else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0 or not isinstance(versions, list):
        return None
    return tuple(str(v) for v in versions)


def ensure_reference_plugin(bin_dir: str, plugin_type: str,
                            search: tuple[str, ...] = REFERENCE_PLUGIN_DIRS) -> str | None:
    """Make ``<bin_dir>/<plugin_type>`` exist: a copy (atomic) of the first one found in
    ``search`` when missing. Returns a note when it copied, None when it was there; raises
    :class:`ConflistError` when there is none anywhere."""
    target = os.path.join(bin_dir, plugin_type)
    if os.access(target, os.X_OK):
        return None
    for directory in search:
        source = os.path.join(directory, plugin_type)
        if os.path.abspath(source) != os.path.abspath(target) and os.access(source, os.X_OK):
            copy_atomic(source, target, 0o755)
            return f"copied {source} to {target}"
    raise ConflistError(f"{plugin_type}: no executable in {bin_dir} nor in "
                        f"{', '.join(search)} (install containernetworking-plugins, or "
                        f"--no-{plugin_type})")


def _read_existing(path: str) -> dict[str, object] | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConflistError(f"{path}: cannot read the existing conflist ({exc}); move it "
                            "away or fix it") from None
    return data if isinstance(data, dict) else None


def install(bin_dir: str = DEFAULT_BIN_DIR, conf_dir: str = DEFAULT_CONF_DIR, *,
            name: str = "netweft", bridge: str = DEFAULT_BRIDGE,
            subnet_file: str = DEFAULT_SUBNET_FILE, data_dir: str = DEFAULT_DATA_DIR,
            socket_path: str = DEFAULT_SOCKET_PATH, log_file: str = DEFAULT_LOG_FILE,
            mtu: int | None = None, ip_masq: bool | None = None,
            extra: dict[str, object] | None = None, tcp_port: int = DEFAULT_TCP_PORT,
            token_file: str | None = None,
            tcp_timeout: int = DEFAULT_TCP_TIMEOUT, cni_version: str = DEFAULT_CNI_VERSION,
            portmap: bool = True, chain: list[dict[str, object]] | None = None,
            replace_chain: bool = False,
            reference_dirs: tuple[str, ...] = REFERENCE_PLUGIN_DIRS) -> Installed:
    """Write the launchers and the conflist; returns the paths and notes for the user
    (``mtu`` in bytes, None: the node's ``FLANNEL_MTU``; ``tcp_timeout`` in seconds).

    ``tcp_port``/``token_file`` must match the CNI server's (0: no TCP fast path).
    ``cni_version``: the conflist's ``cniVersion`` (what runtimes without ``cniVersions``
    use); ``portmap``: chain the reference portmap plugin (Flannel's stock conflist);
    ``chain``: more plugin entries to chain after it. Plugins a user chained into an existing
    conflist are kept (and said so) unless ``replace_chain``. Raises :class:`ConflistError`
    (one line) for a config that cannot work, ValueError for a bad port, OSError on I/O."""
    if not 0 <= tcp_port < 1024:
        raise ValueError(f"tcp_port {tcp_port}: must be 0 (off) or a privileged port < 1024")
    options: dict[str, object] = {
        "bridge": bridge, "isGateway": True, "isDefaultGateway": True, "hairpinMode": True,
        "subnetFile": subnet_file, "dataDir": data_dir, "socketPath": socket_path,
        "logFile": log_file,
    }
    if mtu is not None:
        options["mtu"] = mtu
    if ip_masq is not None:
        options["ipMasq"] = ip_masq
    options.update(extra or {})
    conf = os.path.join(conf_dir, CONF_NAME)
    plan: ChainPlan = merge_chain(_read_existing(conf), BIN_NAME, portmap, chain or [],
                                  replace_chain)
    notes = list(plan.notes)
    if portmap:
        note = ensure_reference_plugin(bin_dir, PORTMAP_TYPE, reference_dirs)
        if note:
            notes.append(note)
    # containerd's CRI sets up every pod's lo with "loopback" from the same bin dir and fails
    # each sandbox without it (while reporting NetworkReady): bring it along when we can
    try:
        note = ensure_reference_plugin(bin_dir, LOOPBACK_TYPE, reference_dirs)
    except ConflistError:
        note = (f"no {LOOPBACK_TYPE} plugin in {bin_dir} nor {', '.join(reference_dirs)}: "
                "containerd's CRI needs it there")
    if note:
        notes.append(note)
    supported = {}
    for entry in plan.chained:
        kind = str(entry.get("type", ""))
        path = os.path.join(bin_dir, kind)
        supported[kind] = plugin_versions(path) if os.access(path, os.X_OK) else None
    text, version_notes = build_conflist(name, plugin_entry(options), plan.chained,
                                         cni_version, supported)
    notes += version_notes
    with contextlib.suppress(OSError, py_compile.PyCompileError):
        py_compile.compile(os.path.join(package_root(), "cni", "shim.py"), doraise=True)
    exe = os.path.join(bin_dir, BIN_NAME)
    py_exe = os.path.join(bin_dir, PY_BIN_NAME)
    write_atomic(py_exe, launcher_text(socket_path, log_file), 0o755)
    write_atomic(exe, bash_launcher_text(py_exe, socket_path, log_file, tcp_port,
                                         token_file or default_token_file(socket_path),
                                         tcp_timeout), 0o755)
    write_atomic(conf, json.dumps(text, indent=2) + "\n", 0o644)
    return Installed(exe, conf, notes)


def uninstall(bin_dir: str = DEFAULT_BIN_DIR, conf_dir: str = DEFAULT_CONF_DIR) -> list[str]:
    """Remove what :func:`install` wrote (an executable not ours is left alone)."""
    removed = []
    for exe in (os.path.join(bin_dir, BIN_NAME), os.path.join(bin_dir, PY_BIN_NAME)):
        with contextlib.suppress(OSError), open(exe, encoding="utf-8", errors="replace") as f:
            ours = MARKER in f.read(4096)
            if ours:
                os.unlink(exe)
                removed.append(exe)
    conf = os.path.join(conf_dir, CONF_NAME)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(conf)
        removed.append(conf)
    return removed
