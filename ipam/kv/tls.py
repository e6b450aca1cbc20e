"""TLS for the etcd client: load and check the files up front, and explain handshake failures.

Every problem is one line naming the option and file (``--etcd-cafile``, ``--etcd-certfile``,
``--etcd-keyfile``) or the certificate at fault, raised as :class:`EtcdConfigError` — never a
traceback, never "unreachable" for what is a certificate mistake. The files are checked with the
standard library's ``ssl`` (the same OpenSSL parsing etcd's peers would do); handshake failures
are recognised by OpenSSL's reason codes in the errors Python's ``ssl`` raises (such as
``CERTIFICATE_VERIFY_FAILED``, or the alert a server sent when it refused our certificate).
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass

from netweft.kv.types import EtcdError


class EtcdConfigError(EtcdError):
    """The etcd connection is misconfigured (a file, a certificate): retrying will not help."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM bytes as read and checked: CA bundle (None: the system's), client
    certificate chain and key (both None: no client certificate)."""

    ca: bytes | None
    cert: bytes | None
    key: bytes | None


def _read(option: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise EtcdConfigError(f"{option} {path}: no such file") from None
    except IsADirectoryError:
        raise EtcdConfigError(f"{option} {path}: is a directory, not a PEM file") from None
    except PermissionError:
        raise EtcdConfigError(f"{option} {path}: permission denied") from None
    except OSError as exc:
        raise EtcdConfigError(f"{option} {path}: cannot read it ({exc.strerror})") from None
    if b"-----BEGIN " not in data:
        raise EtcdConfigError(f"{option} {path}: not a PEM file (no '-----BEGIN' line)")
    return data


def load_tls(cafile: str | None, certfile: str | None, keyfile: str | None) -> TlsFiles:
    """Read and check the files: the CA bundle holds certificates, the certificate and key parse
    and belong together. :class:`EtcdConfigError` otherwise."""
    if (certfile is None) != (keyfile is None):
        raise EtcdConfigError("--etcd-certfile and --etcd-keyfile go together")
    ca = _read("--etcd-cafile", cafile) if cafile else None
    cert = _read("--etcd-certfile", certfile) if certfile else None
    key = _read("--etcd-keyfile", keyfile) if keyfile else None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca is not None:
        try:
            ctx.load_verify_locations(cadata=ca.decode("ascii", "replace"))
        except ssl.SSLError:
            raise EtcdConfigError(f"--etcd-cafile {cafile}: holds no valid PEM "
                                  "certificate") from None
    if certfile and keyfile:
        try:
            ctx.load_cert_chain(certfile, keyfile)
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise EtcdConfigError(f"--etcd-keyfile {keyfile}: is not the key of the "
                                      f"certificate in --etcd-certfile {certfile}") from None
            if b"PRIVATE KEY-----" not in key:  # type: ignore[operator]
                raise EtcdConfigError(f"--etcd-keyfile {keyfile}: holds no PEM private "
                                      "key") from None
            if b"CERTIFICATE-----" not in cert:  # type: ignore[operator]
                raise EtcdConfigError(f"--etcd-certfile {certfile}: holds no PEM "
                                      "certificate") from None
            raise EtcdConfigError(f"--etcd-certfile {certfile} / --etcd-keyfile {keyfile}: "
                                  f"cannot be used together ({exc.reason or exc})") from None
    return TlsFiles(ca, cert, key)


def client_context(files: TlsFiles, certfile: str | None, keyfile: str | None) -> ssl.SSLContext:
    """The client's TLS context: the CA bundle in ``files`` (None: the system's), the client
    certificate and key when given, host names checked. The files were checked by
    :func:`load_tls`; :class:`EtcdConfigError` if they still cannot be used."""
    try:
        ctx = ssl.create_default_context(
            cadata=files.ca.decode("ascii", "replace") if files.ca is not None else None)
        if certfile and keyfile:
            ctx.load_cert_chain(certfile, keyfile)
    except (ssl.SSLError, OSError) as exc:
        raise EtcdConfigError(f"--etcd-cafile/--etcd-certfile: cannot be used ({exc})") from None
    return ctx


_VERIFY = re.compile(r"certificate verify failed: ([^(]+)", re.IGNORECASE)


def explain_tls(details: str, url: str, host: str, cafile: str | None,
                certfile: str | None) -> str | None:
    """One line for a TLS failure of a call to ``url``; ``details``: the text of the error and
    its causes (Python's ``ssl`` reports OpenSSL's reason codes, e.g. ``CERTIFICATE_VERIFY_FAILED``
    or the alert the server sent, ``TLSV13_ALERT_CERTIFICATE_REQUIRED``). None when ``details``
    is not about TLS."""
    up = details.upper()
    if "MISMATCH, CERTIFICATE IS NOT VALID FOR" in up:
        return (f"etcd at {url}: its TLS certificate is not valid for {host!r} (not in its "
                "subjectAltName): connect by a name or address the certificate lists")
    if "CERTIFICATE_VERIFY_FAILED" in up or "CERTIFICATE VERIFY FAILED" in up:
        m = _VERIFY.search(details)
        why = m.group(1).strip().rstrip(".") if m else "verification failed"
        trust = (f"it is not signed by a CA in --etcd-cafile {cafile}" if cafile else
                 "give the CA that signed it with --etcd-cafile")
        return f"etcd at {url}: its TLS certificate is not trusted ({why}): {trust}"
    if "ALERT_CERTIFICATE_EXPIRED" in up or "ALERT CERTIFICATE EXPIRED" in up:
        return f"etcd at {url} rejected the client certificate --etcd-certfile {certfile}: expired"
    if any(a in up for a in ("ALERT_CERTIFICATE_REQUIRED", "ALERT CERTIFICATE REQUIRED",
                             "ALERT_BAD_CERTIFICATE", "ALERT BAD CERTIFICATE",
                             "ALERT_UNKNOWN_CA", "ALERT UNKNOWN CA", "ALERT_HANDSHAKE_FAILURE")):
        if certfile is None:
            return (f"etcd at {url} wants a TLS client certificate: give --etcd-certfile and "
                    "--etcd-keyfile")
        return (f"etcd at {url} rejected the client certificate --etcd-certfile {certfile} "
                "(not signed by a CA etcd trusts, or expired)")
    m = re.search(r"\[SSL: ([A-Z0-9_]+)\]", details)
    if m:
        return (f"etcd at {url}: TLS handshake failed ({m.group(1)}): does it serve TLS on that "
                "port? (http:// endpoints without --etcd-cafile use plain HTTP)")
    return None


def explain_reset_after_handshake(url: str, certfile: str | None) -> str | None:
    """One line for a TLS connection that the server reset or closed at the first request,
    right after a handshake that had succeeded on our side, when we sent a client certificate.

    With TLS 1.3 the client finishes its handshake before the server has checked the client
    certificate (RFC 8446 section 4.4.4); a server that rejects it sends an alert and closes,
    and if the close reaches us as a reset before the alert is read, the alert is lost (a reset
    discards what the kernel had not yet handed us). So the most likely cause is named as such.
    None without a client certificate (then a reset says nothing about TLS)."""
    if certfile is None:
        return None
    return (f"etcd at {url} reset the connection right after the TLS handshake: it most likely "
            f"rejected the client certificate --etcd-certfile {certfile} (not signed by a CA "
            "etcd trusts, or expired)")
