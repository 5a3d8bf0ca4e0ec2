"""A certificate authority of the test's own (openssl), and certificates it signs: servers behind TLS
(an OTLP backend, Redis) and the bridge's client certificate for mutual TLS; and a public CA's chain as
its certificates name one another (`PublicCa`: a root, an intermediate, a leaf)."""

import ipaddress
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID


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
    (d / "bridge.ext").write_text(leaf + "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:otel-bridge\n")
    for name, subject in (("backend", "/CN=127.0.0.1"), ("bridge", "/CN=otel-bridge")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", subject,
                 "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))  # fmt: skip
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
                 "-CAcreateserial", "-days", "1", "-extfile", str(d / f"{name}.ext"),
                 "-out", str(d / f"{name}.pem"))  # fmt: skip
    return {p.name: str(p) for p in d.iterdir()}


NOW = datetime.now(UTC)
ISSUERS_URL = "http://r11.i.example.org/"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    ca: bool,
    fetched_from: str | None = None,
) -> x509.Certificate:
    """A certificate of `subject`'s `key`, signed by `issuer` (itself when None), naming where its issuer's
    certificate is fetched from when `fetched_from` is given (as public CAs' leaves do)."""
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)  # keyCertSign, cRLSign
        builder = builder.add_extension(usage, critical=True)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("bridge.example.org"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            False,
        )
    builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
    )
    if fetched_from is not None:
        where = x509.AccessDescription(
            AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(fetched_from)
        )
        builder = builder.add_extension(x509.AuthorityInformationAccess([where]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


class PublicCa:
    """A root, its intermediate (R11), and a leaf R11 issued naming where R11's certificate is (Let's Encrypt's)."""

    def __init__(self, directory: Path) -> None:
        root_key, r11_key, self.leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
        self.root = issue("Root X1", root_key, None, ca=True)
        self.r11 = issue("R11", r11_key, ("Root X1", root_key), ca=True, fetched_from="http://x1.i.example.org/")
        self.leaf = issue("bridge.example.org", self.leaf_key, ("R11", r11_key), ca=False, fetched_from=ISSUERS_URL)
        self.directory = directory
        (directory / "root.pem").write_bytes(_pem(self.root))
        (directory / "leaf.key").write_bytes(
            self.leaf_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )

    def file(self, name: str, *certificates: x509.Certificate) -> Path:
        path = self.directory / name
        path.write_bytes(_pem(*certificates))
        return path
