"""URLs as messages and logs show them: never a credential, whether in the user info or in the query."""

import pytest

from otel_bridge.urls import events_url, without_secrets


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://collector:4318", "http://collector:4318"),
        ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
        # A gateway's key in the query of an OTLP endpoint, a SAS signature, redis-py's own password parameter.
        ("http://gw:4318/otlp?api-key=s3cret", "http://gw:4318/otlp?api-key=***"),
        ("https://u:s3cret@h/x?sig=s3cret&sv=2024-01-01", "https://u:***@h/x?sig=***&sv=2024-01-01"),
        ("redis://redis:6379?password=s3cret&db=2", "redis://redis:6379?password=***&db=2"),
        ("http://h/?access_token=s3cret&X-Auth=s3cret", "http://h/?access_token=***&X-Auth=***"),
        # What is no credential is shown as given: where the CA is, which database.
        ("rediss://redis:6379/0?ssl_ca_certs=/etc/ca.pem", "rediss://redis:6379/0?ssl_ca_certs=/etc/ca.pem"),
        ("http://[::1", "http://[::1"),  # does not parse: shown as it is, without user info
        ("http://user:s3cret@[::1", "http://***@[::1"),
    ],
)
def test_a_url_is_shown_without_the_credentials_it_holds(url, shown):
    assert without_secrets(url) == shown


@pytest.mark.parametrize(
    ("given", "posted_to"),
    [
        ("http://127.0.0.1:4380", "http://127.0.0.1:4380/v1/events"),
        ("http://127.0.0.1:4380/", "http://127.0.0.1:4380/v1/events"),
        ("https://bridge.internal", "https://bridge.internal/v1/events"),
        ("http://127.0.0.1:4380/v1/events", "http://127.0.0.1:4380/v1/events"),
        ("http://proxy:8080/otel-bridge/v1/events", "http://proxy:8080/otel-bridge/v1/events"),
    ],
)
def test_a_bridge_given_by_its_address_is_posted_to_at_its_tracker_endpoint(given, posted_to):
    assert events_url(given) == posted_to
