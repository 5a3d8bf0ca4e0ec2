"""The certificates the bridge presents, and when each ends: the one it serves HTTPS with (`tls_certfile`)
and its client certificate for an OTLP backend that asks for one (mutual TLS). Both are renewed on disk
while the bridge runs and taken without a restart (receivers/served_tls.py, export/otlp_grpc.py); one
that ends before its renewal came stops the producers' batches, or the export."""

from pathlib import Path

from otel_bridge.export.otlp import standard_variable


class UnreadableCertificate(ValueError):
    """The file holds no PEM certificate that can be read (or cannot be read at all): why, naming it."""


def expiration(certfile: Path) -> float:
    """When the certificate `certfile` presents (its first, the chain's leaf) ends: seconds since the epoch."""
    from cryptography import x509  # ~30 ms to import: only where a certificate is given

    try:
        certificate = x509.load_pem_x509_certificates(certfile.read_bytes())[0]
    except (OSError, ValueError, IndexError) as exc:
        raise UnreadableCertificate(f"cannot read the TLS certificate {certfile}: {exc}") from None
    return certificate.not_valid_after_utc.timestamp()


def otlp_client_certificates() -> dict[str, Path]:
    """The client certificates the standard variables give the OTLP export, by the variable that names each
    (a file both signals present is named once, by the first)."""
    found: dict[str, Path] = {}
    for signal in ("traces", "metrics"):
        variable, path = standard_variable(signal, "CLIENT_CERTIFICATE")
        if path and Path(path) not in found.values():
            found[variable] = Path(path)
    return found
