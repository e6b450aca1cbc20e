"""TLS for the etcd client: load and check the files up front, and explain handshake failures.

Every problem is one line naming the option and file (``--etcd-cafile``, ``--etcd-certfile``,
``--etcd-keyfile``) or the certificate at fault, raised as :class:`EtcdConfigError` — never a
traceback, never "unreachable" for what is a certificate mistake. The files are checked with the
standard library's ``ssl`` (the same OpenSSL parsing etcd's peers would do); handshake failures
are recognised in gRPC's status details (BoringSSL reason codes such as
``CERTIFICATE_VERIFY_FAILED``), which is the only place gRPC reports them.
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
    """PEM bytes for grpc.ssl_channel_credentials: CA bundle (None: the system's), client
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


_VERIFY = re.compile(r"CERTIFICATE_VERIFY_FAILED: ([^:]+)")


def explain_handshake(details: str, url: str, host: str, cafile: str | None,
                      certfile: str | None) -> str | None:
    """One line for a TLS failure in gRPC status ``details`` of a call to ``url``; None when
    ``details`` is not about TLS."""
    if "CERTIFICATE_VERIFY_FAILED" in details:
        m = _VERIFY.search(details)
        why = m.group(1).strip() if m else "verification failed"
        trust = (f"it is not signed by a CA in --etcd-cafile {cafile}" if cafile else
                 "give the CA that signed it with --etcd-cafile")
        return f"etcd at {url}: its TLS certificate is not trusted ({why}): {trust}"
    if "Hostname Verification Check failed" in details or (
            "Peer name" in details and "not in peer certificate" in details):
        return (f"etcd at {url}: its TLS certificate is not valid for {host!r} (not in its "
                "subjectAltName): connect by a name or address the certificate lists")
    if ("TSI_DATA_CORRUPTED" in details or "ALERT_BAD_CERTIFICATE" in details
            or "CERTIFICATE_REQUIRED" in details or "ALERT_UNKNOWN_CA" in details):
        if certfile is None:
            return (f"etcd at {url} wants a TLS client certificate: give --etcd-certfile and "
                    "--etcd-keyfile")
        return (f"etcd at {url} rejected the client certificate --etcd-certfile {certfile} "
                "(not signed by a CA etcd trusts, or expired)")
    if "ALERT_CERTIFICATE_EXPIRED" in details:
        return f"etcd at {url} rejected the client certificate --etcd-certfile {certfile}: expired"
    if "Tls handshake failed" in details or "SSL_ERROR" in details:
        m = re.search(r"OPENSSL_internal:([A-Z_]+)", details)
        why = m.group(1) if m else "handshake failed"
        return (f"etcd at {url}: TLS handshake failed ({why}): does it serve TLS on that port? "
                "(http:// endpoints without --etcd-cafile use plain gRPC)")
    return None
