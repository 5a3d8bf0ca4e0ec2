"""What a failed TLS handshake with Redis tells the operator to add to the URL."""

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from otel_bridge.redis_client import tls_hint

_CLIENT_CERTIFICATE = "ssl_certfile=/path/cert.pem&ssl_keyfile=/path/key.pem"
_URL = "rediss://redis:6380/0?ssl_ca_certs=/ca.pem"


@pytest.mark.parametrize(
    "said",
    [
        "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required",
        "[SSL: SSLV3_ALERT_HANDSHAKE_FAILURE] sslv3 alert handshake failure",
        "EOF occurred in violation of protocol",
        # TLS 1.3: the client's handshake is over before Redis reads it, and its refusal is a reset.
        "Error 104 while writing to socket. Connection reset by peer.",
        "Error 32 while writing to socket. Broken pipe.",
    ],
)
def test_a_redis_that_refused_the_bridge_without_a_certificate_is_answered_with_the_url_parameters(said):
    assert _CLIENT_CERTIFICATE in tls_hint(RedisConnectionError(said), _URL)


def test_a_reset_is_no_missing_certificate_where_one_was_given_or_no_tls_was_spoken():
    reset = RedisConnectionError("Error 104 while writing to socket. Connection reset by peer.")
    assert tls_hint(reset, f"{_URL}&ssl_certfile=/b.pem&ssl_keyfile=/b.key") == ""
    assert tls_hint(reset, "redis://redis:6379/0") == ""


def test_a_certificate_redis_presents_that_no_known_ca_signed_is_answered_with_the_ca_parameter():
    unknown = RedisConnectionError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed")
    assert "ssl_ca_certs=/path/ca.pem" in tls_hint(unknown, "rediss://redis:6380/0")
