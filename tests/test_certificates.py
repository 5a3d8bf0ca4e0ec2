"""What the served certificate's file lacks for the producers' clients: the intermediate of a leaf served alone,
a host's name where clients look for it."""

import contextlib
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
from pki import ISSUERS_URL, PublicCa, issue

from otel_bridge.certificates import chain_sent_lacks, names_a_host, refused_by_clients

NOW = datetime.now(UTC)


@pytest.fixture
def public_ca(tmp_path) -> PublicCa:
    return PublicCa(tmp_path)


def _handshake(ca: PublicCa, certfile: Path) -> None:
    """A real handshake of a client that trusts the root alone (as Node.js and Python do: nothing fetched) with a
    server serving `certfile`: raises what the client refused."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(certfile, ca.directory / "leaf.key")
    client = ssl.create_default_context(cafile=ca.directory / "root.pem")
    server_end, client_end = socket.socketpair()

    def serve() -> None:
        with contextlib.suppress(ssl.SSLError):  # the client's refusal, met on the server's side
            server_context.wrap_socket(server_end, server_side=True).close()

    server = threading.Thread(target=serve)
    server.start()
    try:
        client.wrap_socket(client_end, server_hostname="bridge.example.org").close()
    finally:
        server.join()
        server_end.close()
        client_end.close()


def test_a_leaf_served_alone_lacks_its_intermediate_which_clients_refuse_it_for(public_ca):
    alone = public_ca.file("cert.pem", public_ca.leaf)  # certbot's cert.pem
    assert chain_sent_lacks(public_ca.leaf, []) == f"the certificate of its issuer, CN=R11 ({ISSUERS_URL})"
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer certificate"):
        _handshake(public_ca, alone)


def test_a_leaf_served_with_its_intermediate_lacks_nothing_the_roots_do_not_give(public_ca):
    full = public_ca.file("fullchain.pem", public_ca.leaf, public_ca.r11)  # certbot's fullchain.pem
    assert chain_sent_lacks(public_ca.leaf, [public_ca.r11]) is None
    _handshake(public_ca, full)  # taken


def test_a_private_cas_leaf_and_a_self_signed_certificate_are_left_to_the_clients_given_their_ca(public_ca):
    key = ec.generate_private_key(ec.SECP256R1())
    private_key = ec.generate_private_key(ec.SECP256R1())
    private = issue("bridge", key, ("our CA", private_key), ca=False)  # names no place to fetch its issuer from
    assert chain_sent_lacks(private, []) is None
    assert chain_sent_lacks(issue("bridge", key, None, ca=False), []) is None


def test_a_certificate_that_names_its_host_only_in_its_cn_is_said_to_be_refused_by_every_client(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    only_cn = x509.CertificateBuilder().subject_name(_cn("bridge.example.org")).issuer_name(_cn("bridge.example.org"))
    only_cn = only_cn.public_key(key.public_key()).serial_number(x509.random_serial_number())
    only_cn = only_cn.not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=30))
    path = tmp_path / "cn.pem"
    path.write_bytes(only_cn.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    (told,) = refused_by_clients(path)
    assert told.startswith(
        f"the TLS certificate {path} names no host in its subjectAltName (its CN, bridge.example.org"
    )
    ca = PublicCa(tmp_path)
    assert names_a_host(ca.leaf)  # DNS and IP names in its subjectAltName
    assert refused_by_clients(ca.file("fullchain.pem", ca.leaf, ca.r11)) == []


def _cn(name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
