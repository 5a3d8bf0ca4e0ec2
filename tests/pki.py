"""A certificate authority of the test's own (openssl), and certificates it signs: servers behind TLS
(an OTLP backend, Redis) and the bridge's client certificate for mutual TLS."""

import subprocess
from pathlib import Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(directory: Path) -> dict[str, str]:
    """In `directory`: `ca.pem`; `backend.pem`/`.key` for 127.0.0.1; `bridge.pem`/`.key`, a client's. Paths by name."""
    d = directory
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test CA",
             "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"))  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, subject, extension in (("backend", "/CN=127.0.0.1", ["-extfile", str(d / "san.ext")]),
                                     ("bridge", "/CN=otel-bridge", [])):  # fmt: skip
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject,
                 "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))  # fmt: skip
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
                 "-CAcreateserial", "-days", "1", "-out", str(d / f"{name}.pem"), *extension)  # fmt: skip
    return {p.name: str(p) for p in d.iterdir()}
