"""A certificate authority of the test's own (openssl), and certificates it signs: servers behind TLS
(an OTLP backend, Redis) and the bridge's client certificate for mutual TLS."""

import subprocess
from pathlib import Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(directory: Path) -> dict[str, str]:
    """In `directory`: `ca.pem`; `backend.pem`/`.key` for 127.0.0.1; `bridge.pem`/`.key`, a client's. Paths by name.

    Certificates as RFC 5280 asks (a CA's key usage, each leaf's key identifiers and purpose): Python 3.13
    verifies strictly by default (`VERIFY_X509_STRICT`) and refused the CA openssl makes bare ("CA cert does
    not include key usage extension"), failing every TLS test there."""
    d = directory
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))  # fmt: skip
    leaf = (
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
    )
    # Each also the other's: Redis replicates with its server certificate, and a test serves the bridge's own.
    (d / "backend.ext").write_text(leaf + "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1\n")
    (d / "bridge.ext").write_text(leaf + "extendedKeyUsage=serverAuth,clientAuth\n")
    for name, subject in (("backend", "/CN=127.0.0.1"), ("bridge", "/CN=otel-bridge")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject,
                 "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))  # fmt: skip
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
                 "-CAcreateserial", "-days", "1", "-extfile", str(d / f"{name}.ext"),
                 "-out", str(d / f"{name}.pem"))  # fmt: skip
    return {p.name: str(p) for p in d.iterdir()}
