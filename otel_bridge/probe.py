"""`otel-bridge probe URL`: what a producer's tracker meets posting to a bridge, asked from where it runs.

`check` asks what the bridge itself would meet; a producer's first batch meets other things, each of which
loses every batch it sends and none of which the producer's tracker says (it re-sends three times, then
drops): an address a Cloudflare Worker cannot reach (a port, which a deployed Worker's `fetch` ignores; an
IP address, which it refuses), a certificate it does not trust (a private CA, an intermediate the bridge
does not send, a name it does not cover, an end passed), `http://` to a bridge serving HTTPS or the
converse, a key the bridge does not take, a path that is no endpoint, or something else answering there.
The probe posts an empty batch (`{"events": []}`: the bridge takes it and stores nothing), with the
headers given, as the durable-effect tracker posts, and says what each step met.
"""

import ipaddress
import socket
import ssl
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from otel_bridge.certificates import chain_sent_lacks, when_it_ends
from otel_bridge.preflight import Finding
from otel_bridge.urls import events_url, host_problem, without_secrets

# What a certificate verification's failure to find the issuer means, for a certificate of a private CA.
_PRIVATE_CA = (
    "the certificate is of a CA the producer was not given (a private one: Node.js takes it in "
    "NODE_EXTRA_CA_CERTS; here, --cafile)"
)


def probe(
    url: str, headers: Mapping[str, str], cafile: str | None = None, worker: bool = False, timeout: float = 5.0
) -> list[Finding]:
    """Each step of a producer's POST to `url`, in the order it meets them; none raises. `worker`: the producer
    is a deployed Cloudflare Worker, whose `fetch` reaches a host by its name alone, on its scheme's port."""
    address = _address(url, worker)
    findings = [address]
    if address.ok is False:
        return findings
    url = events_url(url)
    tls = _verifying(cafile)
    if urlsplit(url).scheme == "https":
        findings.append(_handshake(url, tls, timeout))
        if findings[-1].ok is False:
            return findings
    findings.append(_answer(url, headers, tls, timeout))
    return findings


def _address(url: str, worker: bool) -> Finding:
    if not url.lower().startswith(("http://", "https://")):
        return Finding("address", False, f"{without_secrets(url)} is not an http:// or https:// URL")
    if (why := host_problem(url)) is not None:  # a port past 65535, a bracket not closed: a traceback of urllib's
        return Finding("address", False, f"{without_secrets(url)} names no host to post to: {why}")
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port
    default = 443 if parts.scheme == "https" else 80
    try:
        ipaddress.ip_address(host)
        literal = True
    except ValueError:
        literal = False
    said = f"{parts.scheme}://{host}, port {port or default}"
    if worker and literal:
        return Finding("address", False, f"{said}: a deployed Worker's fetch reaches hosts by name, never by address")
    if worker and port not in (None, default):
        return Finding(
            "address",
            False,
            f"{said}: a deployed Worker's fetch ignores a port in the URL and sends to {default}, where no bridge "
            "answers — give the bridge a hostname on the scheme's own port",
        )
    return Finding("address", True, said + (" (a Worker's fetch takes it)" if worker else ""))


def _verifying(cafile: str | None) -> ssl.SSLContext:
    """The public CAs a producer trusts (certifi's, Mozilla's list, as httpx has them), and a private one given."""
    import certifi

    tls = ssl.create_default_context(cafile=certifi.where())
    if cafile is not None:
        tls.load_verify_locations(cafile)
    return tls


def _handshake(url: str, tls: ssl.SSLContext, timeout: float) -> Finding:
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    try:
        certificate, _der = _met(host, port, tls, timeout)
    except ssl.SSLCertVerificationError as exc:
        why = exc.verify_message or exc.reason or str(exc)
        if "local issuer" in why or "self-signed" in why or "self signed" in why:
            return Finding("tls", False, f"{why}: {_unchained(host, port, timeout)}")
        if "expired" in why:
            return Finding("tls", False, f"{why}: the bridge's certificate has ended, and every producer refuses it")
        if "Hostname mismatch" in why or "IP address mismatch" in why:
            return Finding("tls", False, f"{why}: the certificate does not name {host}, the host producers post to")
        return Finding("tls", False, why)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if reason in ("WRONG_VERSION_NUMBER", "UNEXPECTED_EOF_WHILE_READING", "RECORD_LAYER_FAILURE") or "EOF" in str(
            exc
        ):
            return Finding(
                "tls",
                False,
                f"{reason}: no TLS answered on port {port} — the URL says https://, and the server there speaks plain "
                "HTTP (a bridge without tls_certfile closes such a connection, and its log says so)",
            )
        return Finding("tls", False, f"the TLS handshake failed: {reason}")
    except OSError as exc:
        return Finding("tls", False, f"cannot connect to {host}:{port}: {exc.strerror or exc}")
    _when, days = when_it_ends(ssl.cert_time_to_seconds(str(certificate["notAfter"])), time.time())
    issuer: dict[str, Any] = dict(pair[0] for pair in certificate.get("issuer", ()))
    by = issuer.get("organizationName") or issuer.get("commonName") or "its issuer"
    return Finding("tls", True, f"a certificate of {by} the producer trusts, for {host}, ending in {days:.0f} days")


def _met(host: str, port: int, tls: ssl.SSLContext, timeout: float) -> tuple[dict[str, Any], bytes | None]:
    """The certificate a handshake with `host` over `tls` meets: as `getpeercert` decodes it (empty unless
    verified), and in DER."""
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        tls.wrap_socket(raw, server_hostname=host) as connection,
    ):
        return dict(connection.getpeercert() or {}), connection.getpeercert(binary_form=True)


def _unchained(host: str, port: int, timeout: float) -> str:
    """Why a producer cannot chain the certificate served at `host` to a CA it trusts: an intermediate the bridge
    does not send (a public CA's leaf names where its issuer is, which only browsers fetch), or a private CA."""
    from cryptography import x509

    looking = ssl.create_default_context()
    looking.check_hostname, looking.verify_mode = False, ssl.CERT_NONE
    try:
        _certificate, der = _met(host, port, looking, timeout)
        leaf = x509.load_der_x509_certificate(der) if der else None
    except (OSError, ValueError):
        leaf = None
    if leaf is not None and (missing := chain_sent_lacks(leaf, [])) is not None:
        return (
            f"the bridge sends its certificate without {missing}, which only browsers fetch: give its tls_certfile the "
            "certificate then its intermediates (certbot's fullchain.pem, not cert.pem)"
        )
    return _PRIVATE_CA


def _answer(url: str, headers: Mapping[str, str], tls: ssl.SSLContext, timeout: float) -> Finding:
    sent = {"content-type": "application/json", **headers}  # as the durable-effect tracker posts
    started = time.perf_counter()
    try:
        # Directly, as the handshake before it, and as a Worker's or Node.js's fetch (neither reads HTTPS_PROXY).
        with httpx.Client(verify=tls, timeout=timeout, trust_env=False) as client:
            answer = client.post(url, content=b'{"events":[]}', headers=sent)
    except httpx.HTTPError as exc:
        return Finding("answer", False, f"no answer: {exc or type(exc).__name__}")
    took = f"{answer.status_code} in {(time.perf_counter() - started) * 1000:.0f} ms"
    if answer.is_redirect:
        to = answer.headers.get("location", "?")
        if answer.status_code in (307, 308):  # fetch sends the POST on, body and all
            return Finding("answer", None, f"{took}: sent on to {to}, the batch with it — give the producer that URL")
        return Finding(
            "answer",
            False,
            f"{took}: sent on to {to} as a GET (fetch turns a POST into one on a {answer.status_code}), its batch "
            "dropped — give the producer that URL",
        )
    try:
        body = answer.json()
    except ValueError:
        body = None
    said = body.get("error") if isinstance(body, dict) else None
    if answer.status_code == 200 and isinstance(body, dict) and "accepted" in body:
        return Finding("answer", True, f"takes batches ({took})")
    if not isinstance(body, dict):
        return Finding("answer", False, f"{took} by something that is not otel-bridge (its answer is no JSON)")
    if answer.status_code == 401:
        given = ", ".join(sorted(headers)) or "no header"
        return Finding("answer", False, f"{took}: {said} — the credential sent ({given}) is not one the bridge takes")
    return Finding("answer", False, f"{took}: {said or body}")
