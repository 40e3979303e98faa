"""A test CA and a server certificate it signs, made with the ``openssl`` command."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

__all__ = ["make_certs", "server_context"]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(where: Path, *, alt_names: str = "DNS:localhost") -> Path:
    """``ca.crt`` and ``server.crt`` / ``server.key`` (for ``alt_names``) in ``where``; EC keys,
    quick to make."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=llm-proxy test CA", cwd=where)  # fmt: skip
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=localhost", cwd=where)  # fmt: skip
    (where / "ext.cnf").write_text(f"subjectAltName={alt_names}\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf",
             cwd=where)  # fmt: skip
    return where


def server_context(certs: Path) -> ssl.SSLContext:
    """A server-side TLS context with the certificate of :func:`make_certs`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs / "server.crt", certs / "server.key")
    return context
