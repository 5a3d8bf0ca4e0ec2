"""The certificates the bridge presents, and when each ends: the one it serves HTTPS with (`tls_certfile`)
and its client certificate for an OTLP backend that asks for one (mutual TLS). Both are renewed on disk
while the bridge runs and taken without a restart (receivers/served_tls.py, export/otlp_grpc.py); one
that ends before its renewal came stops the producers' batches, or the export."""

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from otel_bridge.export.otlp_config import FROM_ENVIRONMENT, OtlpConfig

if TYPE_CHECKING:
    from cryptography import x509

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


def refused_by_clients(certfile: Path) -> list[str]:
    """What the producers' clients (Node.js, curl, Python: every client of the bridge's but a browser) will refuse
    the served certificate for, each said: the intermediate the leaf needs not in the file (`chain_sent_lacks`),
    no host named where clients look for one (`names_a_host`). The file is read once, here."""
    from cryptography import x509

    try:
        leaf, *rest = x509.load_pem_x509_certificates(certfile.read_bytes())
    except (OSError, ValueError):
        return []  # told by whatever reads it to serve it
    said = []
    if (missing := chain_sent_lacks(leaf, rest)) is not None:
        said.append(
            f"the TLS certificate {certfile} is served without {missing}: producers (Node.js, curl, Python — every "
            "client but a browser) refuse it, and lose every batch; give tls_certfile the certificate then its "
            "intermediates (certbot's fullchain.pem, not cert.pem; cert-manager's tls.crt holds them)"
        )
    if not names_a_host(leaf):
        common = [str(a.value) for a in leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
        cn = f" (its CN, {common[0]}, is not looked at)" if common else ""
        said.append(
            f"the TLS certificate {certfile} names no host in its subjectAltName{cn}: every producer's client "
            "refuses it, and loses every batch — make it with the host's name there (openssl req -addext "
            "'subjectAltName=DNS:bridge.example.com')"
        )
    return said


def chain_sent_lacks(leaf: "x509.Certificate", rest: "Sequence[x509.Certificate]") -> str | None:
    """What a chain sent as `leaf` then `rest` lacks for a client that fetches nothing, None when nothing: the
    certificate of the intermediate CA that issued the leaf, where the leaf comes alone (certbot's `cert.pem`,
    where `fullchain.pem` holds it with its intermediates). Said only of an issuer the leaf names where to fetch
    it from (Authority Information Access), as public CAs name their intermediates; a private CA's clients are
    given its certificate, and the chain need not hold it. With the leaf's issuer sent, what is above it is the
    clients' roots'."""
    from cryptography import x509
    from cryptography.x509.oid import AuthorityInformationAccessOID

    if leaf.issuer == leaf.subject or any(c.subject == leaf.issuer for c in rest):
        return None
    try:
        access = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return None
    where = [d.access_location.value for d in access if d.access_method == AuthorityInformationAccessOID.CA_ISSUERS]
    return f"the certificate of its issuer, {leaf.issuer.rfc4514_string()} ({where[0]})" if where else None


def names_a_host(leaf: "x509.Certificate") -> bool:
    """Whether the certificate names a host (a DNS name or an address) in its subjectAltName, the one place
    clients have looked for years (Node.js, Python, Go, curl, browsers: never the subject's CN). One made by hand
    with `openssl req` without `-addext subjectAltName=…` names none, and every producer refuses it."""
    from cryptography import x509

    try:
        named = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return bool(named.get_values_for_type(x509.DNSName) or named.get_values_for_type(x509.IPAddress))


def when_it_ends(ends: float, now: float) -> tuple[str, float]:
    """A certificate's end (`expiration`) as told: its time (ISO 8601, UTC) and the days left from `now`."""
    return datetime.fromtimestamp(ends, UTC).isoformat(timespec="seconds"), (ends - now) / 86400


def otlp_client_certificates(config: OtlpConfig = FROM_ENVIRONMENT) -> dict[str, Path]:
    """The client certificates the standard variables (or `config`) give the OTLP export, by the variable
    that names each (a file both signals present is named once, by the first)."""
    found: dict[str, Path] = {}
    for signal in ("traces", "metrics"):
        variable, path = config.variable(signal, "CLIENT_CERTIFICATE")
        if path and Path(path) not in found.values():
            found[variable] = Path(path)
    return found
