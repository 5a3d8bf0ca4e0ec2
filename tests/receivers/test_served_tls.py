"""The certificate the HTTP endpoint serves is taken again from its files once they are renewed, whole."""

import logging
import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pki import PublicCa

from otel_bridge.certificates import TlsFilesError
from otel_bridge.receivers.served_tls import ServedCertificate

NOW = datetime(2026, 12, 5, tzinfo=UTC)


def _certificate(days: float, name: str = "otel-bridge") -> tuple[bytes, bytes]:
    """A self-signed certificate ending `days` from NOW, and its key: PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=30))
        .not_valid_after(NOW + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)  # what clients check
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def _write(directory: Path, pair: tuple[bytes, bytes]) -> tuple[Path, Path]:
    certfile, keyfile = directory / "tls.crt", directory / "tls.key"
    certfile.write_bytes(pair[0])
    keyfile.write_bytes(pair[1])
    return certfile, keyfile


def _served(context: ssl.SSLContext) -> bytes:
    """The certificate a client meets in a real handshake with `context` (DER)."""
    server_end, client_end = socket.socketpair()
    server = threading.Thread(target=lambda: context.wrap_socket(server_end, server_side=True).close())
    server.start()
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    with client.wrap_socket(client_end, server_hostname="otel-bridge") as tls:
        met = tls.getpeercert(binary_form=True)
    server.join()
    server_end.close()
    assert met is not None
    return met


def _der(pem: bytes) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.decode())


def test_a_renewed_certificate_is_served_to_new_connections_once_its_files_change(tmp_path):
    first, renewed = _certificate(90), _certificate(90)
    served = ServedCertificate(*_write(tmp_path, first), None, clock=NOW.timestamp)
    assert _served(served.context) == _der(first[0])
    assert not served.look()  # nothing changed: nothing read

    _write(tmp_path, renewed)
    assert served.look() and served.renewals == 1
    assert _served(served.context) == _der(renewed[0])
    assert served.expires_at == (NOW + timedelta(days=90)).timestamp()


def test_files_caught_mid_renewal_leave_the_certificate_before_served_and_are_taken_once_whole(tmp_path, caplog):
    first, renewed = _certificate(90), _certificate(90)
    certfile, keyfile = _write(tmp_path, first)
    served = ServedCertificate(certfile, keyfile, None, clock=NOW.timestamp)
    certfile.write_bytes(renewed[0])  # its key not yet written: the two do not go together
    assert not served.look() and not served.look()
    assert _served(served.context) == _der(first[0])
    told = [r for r in caplog.records if "the renewed TLS certificate is not served yet" in r.getMessage()]
    assert len(told) == 1 and told[0].levelno == logging.WARNING  # once, however often looked at

    keyfile.write_bytes(renewed[1])
    assert served.look()
    assert _served(served.context) == _der(renewed[0])


def test_files_gone_for_a_moment_are_looked_at_again(tmp_path):
    first, renewed = _certificate(90), _certificate(90)
    certfile, keyfile = _write(tmp_path, first)
    served = ServedCertificate(certfile, keyfile, None, clock=NOW.timestamp)
    certfile.unlink()
    assert not served.look()
    _write(tmp_path, renewed)
    assert served.look() and _served(served.context) == _der(renewed[0])


@pytest.mark.parametrize(
    ("days", "level", "said"),
    [
        (90, logging.INFO, "serving TLS certificate {} which ends 2027-03-05T00:00:00+00:00"),
        (3, logging.WARNING, "serving TLS certificate {} which ends 2026-12-08T00:00:00+00:00 (in 3.0 days)"),
        (-1, logging.ERROR, "serving TLS certificate {} which ended 2026-12-04T00:00:00+00:00: clients refuse it"),
    ],
)
def test_the_certificates_end_is_told_as_it_is_served_the_louder_the_sooner(tmp_path, caplog, days, level, said):
    caplog.set_level(logging.INFO)
    certfile, keyfile = _write(tmp_path, _certificate(days))
    ServedCertificate(certfile, keyfile, None, clock=NOW.timestamp)
    (record,) = [r for r in caplog.records if "TLS certificate" in r.getMessage()]
    assert (record.levelno, record.getMessage().replace(",", "")) == (level, said.format(certfile))


def test_a_certificate_served_without_its_intermediate_is_told_at_start_and_at_a_renewal_that_still_lacks_it(
    tmp_path, caplog
):
    ca = PublicCa(tmp_path)
    certfile = ca.file("tls.crt", ca.leaf)
    served = ServedCertificate(certfile, tmp_path / "leaf.key", None)
    told = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(told) == 1 and told[0].startswith(f"the TLS certificate {certfile} is served without the certificate")
    caplog.clear()
    ca.file("tls.crt", ca.leaf, ca.r11)  # renewed with its chain
    assert served.look()
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_a_file_that_is_no_certificate_is_refused_naming_it(tmp_path):
    certfile, keyfile = _write(tmp_path, (b"not a certificate\n", _certificate(1)[1]))
    with pytest.raises(
        TlsFilesError, match=rf"^cannot use the TLS certificate {certfile} \(key {keyfile}\): not a PEM"
    ):
        ServedCertificate(certfile, keyfile, None)


def test_a_secret_volume_renewed_as_kubernetes_renews_it_is_taken(tmp_path):
    # The kubelet writes the new files into a directory of their own and swaps the `..data` link to it at once:
    # the paths the bridge was given (`tls.crt` -> `..data/tls.crt`) never change, what they lead to does.
    def version(name: str, pair: tuple[bytes, bytes]) -> None:
        (tmp_path / name).mkdir()
        _write(tmp_path / name, pair)

    first, renewed = _certificate(90), _certificate(90)
    version("..2026_12_05_09_00_00.1", first)
    (tmp_path / "..data").symlink_to("..2026_12_05_09_00_00.1")
    for name in ("tls.crt", "tls.key"):
        (tmp_path / name).symlink_to(f"..data/{name}")
    served = ServedCertificate(tmp_path / "tls.crt", tmp_path / "tls.key", None, clock=NOW.timestamp)

    version("..2027_01_04_09_00_00.2", renewed)
    (tmp_path / "..data_tmp").symlink_to("..2027_01_04_09_00_00.2")
    (tmp_path / "..data_tmp").rename(tmp_path / "..data")  # the swap: one rename
    assert served.look() and _served(served.context) == _der(renewed[0])
