"""The node's WireGuard private key, kept in a file the way Flannel keeps it.

Flannel (pkg/backend/wireguard/device.go, ``setupKeys``): the file is ``/run/flannel/wgkey``
unless the environment variable ``WIREGUARD_KEY_FILE`` names another; it holds the base64 private
key (``wgtypes.Key.String()``, no newline); it is created when absent and reused otherwise, so a
restarted node keeps its public key and its peers need no change. netweft writes it the same way,
mode 0600 (Flannel: 0400), atomically, and never logs it: errors name the file, not its content.

Keys are made and turned into public keys by ``wg genkey`` / ``wg pubkey`` (wireguard-tools,
installed by deploy/setup.sh), so no cryptography code of our own is involved.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import stat
import subprocess

from netweft.backends.base import BackendError
from netweft.common.atomicfile import write_atomic

log = logging.getLogger("netweft.wireguard")

DEFAULT_KEY_FILE = "/run/flannel/wgkey"
KEY_FILE_ENV = "WIREGUARD_KEY_FILE"


def key_file_path(environ: dict[str, str] | None = None) -> str:
    """Flannel's key file path: ``$WIREGUARD_KEY_FILE``, else ``/run/flannel/wgkey``."""
    env = os.environ if environ is None else environ
    return env.get(KEY_FILE_ENV) or DEFAULT_KEY_FILE


def is_key(text: str) -> bool:
    """True for a base64 encoding of 32 bytes (a WireGuard private, public or preshared key)."""
    try:
        return len(base64.b64decode(text.strip(), validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


def _wg(args: list[str], stdin: str | None = None) -> str:
    try:
        proc = subprocess.run(["wg", *args], input=stdin, capture_output=True, text=True,
                              timeout=10)
    except FileNotFoundError:
        raise BackendError("wireguard: the `wg` tool is missing (apt-get install "
                           "wireguard-tools)") from None
    if proc.returncode != 0:
        raise BackendError(f"wireguard: wg {args[0]} failed: {proc.stderr.strip()[:200]}")
    return proc.stdout.strip()


def public_key(private_key: str) -> str:
    """The base64 public key of a base64 private key (``wg pubkey``; the key goes by stdin)."""
    return _wg(["pubkey"], stdin=private_key + "\n")


def write_key_file(path: str, key: str) -> None:
    """Write ``key`` to ``path`` atomically, mode 0600, without a newline (Flannel's form)."""
    write_atomic(path, key, 0o600, encoding="ascii")


def load_or_create(path: str) -> str:
    """The base64 private key in ``path``, created (``wg genkey``) when the file is absent.

    Raises BackendError (naming the file, never its content) when the file is unreadable or
    holds no key. A key file readable by group or others is tightened to 0600.
    """
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read().strip()
    except FileNotFoundError:
        key = _wg(["genkey"])
        try:
            write_key_file(path, key)
        except OSError as exc:
            raise BackendError(f"{KEY_FILE_ENV} {path}: cannot write the key file "
                               f"({exc.strerror})") from None
        log.info("wireguard: created private key file %s (mode 0600)", path)
        return key
    except OSError as exc:
        raise BackendError(f"{KEY_FILE_ENV} {path}: cannot read the key file "
                           f"({exc.strerror})") from None
    if not is_key(text):
        raise BackendError(f"{KEY_FILE_ENV} {path}: not a WireGuard private key (base64 of "
                           "32 bytes); remove it to have a new one made")
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        os.chmod(path, 0o600)
        log.warning("wireguard: key file %s was mode %o; now 0600", path, mode)
    return text
