"""The certificates the bridge presents, and when each ends: the one it serves HTTPS with (`tls_certfile`)
and its client certificate for an OTLP backend that asks for one (mutual TLS). Both are renewed on disk
while the bridge runs and taken without a restart (receivers/served_tls.py, export/otlp_grpc.py); one
that ends before its renewal came stops the producers' batches, or the export."""

from datetime import UTC, datetime
from pathlib import Path

from otel_bridge.export.otlp import standard_variable

# How long before its end a certificate is said to end soon (a warning, and BridgeCertificateExpiring's).
SOON_SECONDS = 14 * 86400


class TlsFilesError(ValueError):
    """A certificate's files cannot be used (read, loaded with their key): why, naming them."""


def expiration(certfile: Path) -> float:
    """When the certificate `certfile` presents (its first, the chain's leaf) ends: seconds since the epoch."""
    from cryptography import x509  # ~30 ms to import: only where a certificate is given

    try:
        certificate = x509.load_pem_x509_certificates(certfile.read_bytes())[0]
    except (OSError, ValueError, IndexError) as exc:
        raise TlsFilesError(f"cannot read the TLS certificate {certfile}: {exc}") from None
    return certificate.not_valid_after_utc.timestamp()


def when_it_ends(ends: float, now: float) -> tuple[str, float]:
    """A certificate's end (`expiration`) as told: its time (ISO 8601, UTC) and the days left from `now`."""
    return datetime.fromtimestamp(ends, UTC).isoformat(timespec="seconds"), (ends - now) / 86400


def otlp_client_certificates() -> dict[str, Path]:
    """The client certificates the standard variables give the OTLP export, by the variable that names each
    (a file both signals present is named once, by the first)."""
    found: dict[str, Path] = {}
    for signal in ("traces", "metrics"):
        variable, path = standard_variable(signal, "CLIENT_CERTIFICATE")
        if path and Path(path) not in found.values():
            found[variable] = Path(path)
    return found
