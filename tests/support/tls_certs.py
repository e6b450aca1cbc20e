"""Real X.509 certificates for TLS tests, made per test with Debian's ``openssl`` (EC P-256,
valid for two days): a CA, a server certificate for given subjectAltNames, client certificates,
and a second CA nobody trusts."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl is not installed: run deploy/setup.sh")
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(dir: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA: (certificate, key)."""
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}-key.pem", "-out", f"{name}.pem", "-days", "2",
             "-subj", f"/CN={name}", cwd=dir)
    return dir / f"{name}.pem", dir / f"{name}-key.pem"


def make_cert(dir: Path, name: str, ca: str, san: str) -> tuple[Path, Path]:
    """A certificate signed by CA ``ca`` (made by :func:`make_ca` in ``dir``) for ``san``
    (e.g. ``DNS:localhost,IP:127.0.0.1``), usable by servers and clients: (certificate, key)."""
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}-key.pem", "-out", f"{name}.csr", "-subj", f"/CN={name}",
             cwd=dir)
    (dir / f"{name}.ext").write_text(
        f"subjectAltName={san}\nextendedKeyUsage=serverAuth,clientAuth\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey",
             f"{ca}-key.pem", "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
             "-extfile", f"{name}.ext", cwd=dir)
    return dir / f"{name}.pem", dir / f"{name}-key.pem"


@dataclass(frozen=True)
class Pki:
    ca: Path
    other_ca: Path                 # trusted by nobody
    server: tuple[Path, Path]      # for DNS:localhost only
    client: tuple[Path, Path]      # signed by ca
    stranger: tuple[Path, Path]    # a client certificate signed by other_ca


def make_pki(dir: Path) -> Pki:
    ca, _ = make_ca(dir, "ca")
    other, _ = make_ca(dir, "otherca")
    return Pki(ca, other, make_cert(dir, "server", "ca", "DNS:localhost"),
               make_cert(dir, "client", "ca", "DNS:client"),
               make_cert(dir, "stranger", "otherca", "DNS:client"))
