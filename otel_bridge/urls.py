"""URLs as the bridge's messages and logs show them."""

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from otel_bridge import pem

# Where Sentinels listen unless a `redis+sentinel://` URL says otherwise.
SENTINEL_PORT = 26379


# What stands between `//` and `@`: the user and password of a URL that does not parse.
_USER_INFO = re.compile(r"//[^/@]*@")


# Query parameters whose value is a credential by its name: a gateway's `?api-key=`, a SAS `sig=`,
# redis-py's `?password=`. Their values are not shown; the other parameters (`ssl_ca_certs`) are.
_SECRET_PARAMETER = re.compile(r"pass|secret|token|key|auth|sig|credential", re.IGNORECASE)


def without_secrets(url: str) -> str:
    """The URL without its password, nor the values of the query parameters a credential is given in,
    for messages and logs (one that does not parse, without what stands before its `@`)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _USER_INFO.sub("//***@", url)
    if parts.password is not None:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    if parts.query and _SECRET_PARAMETER.search(parts.query):
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        shown = [(name, "***" if _SECRET_PARAMETER.search(name) else value) for name, value in pairs]
        parts = parts._replace(query=urlencode(shown, safe="*/:"))
    return urlunsplit(parts)


# The query parameters that name a client's own key and give its pass phrase: redis-py's, and libpq's.
_KEY_AND_PASS_PHRASE = (("ssl_keyfile", "ssl_password"), ("sslkey", "sslpassword"))


def encrypted_key_unsaid(url: str) -> str | None:
    """What to say when the URL's own key (mutual TLS: a Redis URL's `ssl_keyfile`, a PostgreSQL URL's
    `sslkey`) is encrypted and its pass phrase (`ssl_password`, `sslpassword`) is not given, else None:
    OpenSSL, and libpq, asked for it on the terminal at the first connection (a service started from one
    waited there), else failed it unsaid."""
    try:
        query = dict(parse_qsl(urlsplit(url).query))
    except ValueError:
        return None  # said by `parse_error`
    for key, pass_phrase in _KEY_AND_PASS_PHRASE:
        if key in query and pass_phrase not in query and pem.encrypted(query[key]):
            return f"its key {query[key]} is encrypted: give its pass phrase (…&{pass_phrase}=…), or the key decrypted"
    return None


def parse_error(url: str) -> str | None:
    """Why `url` does not parse as a URL with a host and an optional port (a bracket not closed, a port
    that is no number), or None."""
    try:
        _port = urlsplit(url).port
    except ValueError as exc:
        return str(exc)
    return None


def host_problem(url: str) -> str | None:
    """Why `url` names no host a request can go to — it does not parse, or it names none — or None."""
    return parse_error(url) or (None if urlsplit(url).hostname else "it names no host")


def sentinels_of(url: str) -> tuple[list[tuple[str, int]], str, int]:
    """The Sentinels a `redis+sentinel://` URL names, the service they watch, and the database."""
    parts = urlsplit(url)
    hosts = parts.netloc.rpartition("@")[2]
    sentinels = []
    for host in (h.strip() for h in hosts.split(",")):
        # A name, an IPv4 address or a bracketed IPv6 one, and its port when given.
        name, port = (host, "") if host.endswith("]") or ":" not in host else host.rsplit(":", 1)
        if not name.strip("[]") or (port and not port.isdigit()):
            raise ValueError(f"{without_secrets(url)!r}: {host!r} is no host[:port] of a Sentinel")
        sentinels.append((name.strip("[]"), int(port or SENTINEL_PORT)))
    service, _, db = parts.path.strip("/").partition("/")
    if not service:
        raise ValueError(
            f"{without_secrets(url)!r} names no service: redis+sentinel://host:26379/SERVICE[/db]"
            " (the name the Sentinels monitor it by, `mymaster` in their example)"
        )
    if db and not db.isdigit():
        raise ValueError(f"{without_secrets(url)!r}: the database {db!r} is no number")
    return sentinels, service, int(db or 0)


def events_url(url: str) -> str:
    """The tracker endpoint of a bridge given by its address alone (`http://host:4380`), as OTLP
    exporters take a base URL and add `/v1/traces`; a URL with a path is taken as it is."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/v1/events")) if parts.path in ("", "/") else url
