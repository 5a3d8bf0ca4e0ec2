"""What configures the OTLP export: the standard `OTEL_*` variables, read and checked as the bridge reads
them, and the options code gives in their place (`OtlpOptions`, the in-process tracker's `otlp=`); and
from them, what the SDK's exporters are made with (`exporter_arguments`).

Each check is here because the SDK took the value and then failed every export, told as a backend away
(or failed the start with a bare error): a mistake is one error at start naming the variable or option.
"""

import difflib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict
from urllib.parse import quote, urlsplit, urlunsplit

from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.util.re import parse_env_headers

from otel_bridge import pem
from otel_bridge.tokens import HEADER_NAME, TOKEN
from otel_bridge.urls import host_problem, without_secrets

log = logging.getLogger(__name__)

GRPC = "grpc"
HTTP_PROTOBUF = "http/protobuf"
PROTOCOLS = (GRPC, HTTP_PROTOBUF)


# How an `OTEL_EXPORTER_OTLP_*TIMEOUT` value is counted, in seconds a unit. The specification counts
# milliseconds, as the Collector and the other languages' SDKs do; the Python SDK's exporters read
# seconds (open-telemetry/opentelemetry-python#4044), so an operator's `10000` (ten seconds
# everywhere else) held each export request of the bridge up to 2.8 hours on a backend that took
# the connection and never answered. The sidecar reads milliseconds; the in-process tracker reads
# seconds, as the application's own Python exporters in its process read the same variable.
MILLISECONDS = 1e-3
SECONDS = 1.0

# The endpoint every signal's path is added to (a signal's own is used as it is given).
_BASE_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"


class OtlpOptions(TypedDict, total=False):
    """The OTLP export's settings given in code (the in-process tracker's `otlp=`), each in place of its
    standard variables (`endpoint`: `OTEL_EXPORTER_OTLP_ENDPOINT` and each signal's own), read as they are."""

    endpoint: str  # the base URL: each signal's path is added (`/v1/traces`); gRPC's `http://host:4317`
    protocol: Literal["http/protobuf", "grpc"]
    headers: Mapping[str, str]
    timeout_seconds: float
    compression: Literal["gzip", "deflate", "none"]
    certificate: str | Path  # the CA the backend's certificate is checked against
    client_key: str | Path  # mutual TLS: the exporter's own key and certificate
    client_certificate: str | Path
    insecure: bool  # gRPC without a scheme in the endpoint: plain text


# Each option's standard variable name (OTEL_EXPORTER_OTLP_{NAME}) and the types it may be given as.
_OPTIONS: dict[str, tuple[str, tuple[type, ...]]] = {
    "endpoint": ("ENDPOINT", (str,)),
    "protocol": ("PROTOCOL", (str,)),
    "headers": ("HEADERS", (Mapping,)),
    "timeout_seconds": ("TIMEOUT", (int, float)),
    "compression": ("COMPRESSION", (str,)),
    "certificate": ("CERTIFICATE", (str, Path)),
    "client_key": ("CLIENT_KEY", (str, Path)),
    "client_certificate": ("CLIENT_CERTIFICATE", (str, Path)),
    "insecure": ("INSECURE", (bool,)),
}
# A header's value as HTTP carries it: printable ASCII, spaces and tabs (a line break in one split the
# request, and what is not Latin-1 failed every export, told as a backend away).
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")


@dataclass(frozen=True, slots=True)
class OtlpConfig:
    """What configures the OTLP export: the standard variables, under what code gave in their place.

    `given`: by standard name (ENDPOINT, HEADERS, …), how it was given (for messages) and its value
    written as its variable would hold it, so that it is read and checked as the variable is.
    `timeout_unit`: how a timeout counts (`MILLISECONDS`, the specification's; `SECONDS` in a Python
    application's process, as its own exporters read the variables)."""

    given: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    timeout_unit: float = MILLISECONDS

    @classmethod
    def in_code(cls, options: Mapping[str, Any] | None, timeout_unit: float) -> "OtlpConfig":
        """The configuration `options` (an `OtlpOptions`) gives over the variables; TypeError for a key that
        is no option or a value of the wrong type, ValueError for a header HTTP cannot carry."""
        given: dict[str, tuple[str, str]] = {}
        for key, value in (options or {}).items():
            if key not in _OPTIONS:
                close = difflib.get_close_matches(str(key), list(_OPTIONS), n=1, cutoff=0.6)
                meant = f"; did you mean {close[0]!r}?" if close else f" (the options: {', '.join(_OPTIONS)})"
                raise TypeError(f"otlp: {key!r} is no option of the OTLP export{meant}")
            name, types = _OPTIONS[key]
            if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
                kinds = " or ".join(f"{'an' if t.__name__[0] in 'aeiou' else 'a'} {t.__name__}" for t in types)
                raise TypeError(f"otlp[{key!r}] is {type(value).__name__}: give {kinds}")
            written = _as_variable(key, value)
            if not written and key != "headers":
                # Read as unset by the bridge, while the SDK's exporter would read the variable in its place.
                raise ValueError(f"otlp[{key!r}] is empty: leave it out for the default")
            given[name] = (f"otlp[{key!r}]", written)
        return cls(given, timeout_unit)

    def variable(self, signal: str, name: str) -> tuple[str, str]:
        """What gives `name` (ENDPOINT, TIMEOUT, …) to `signal`'s export, and its value: code's, else the
        signal's own variable, then the one for every signal, as the SDK and the specification read them
        (an empty value is unset); the latter's name and "" when nothing gives it."""
        if (given := self.given.get(name)) is not None:
            return given
        for variable in (f"OTEL_EXPORTER_OTLP_{signal.upper()}_{name}", f"OTEL_EXPORTER_OTLP_{name}"):
            if value := os.environ.get(variable, "").strip():
                return variable, value
        return f"OTEL_EXPORTER_OTLP_{name}", ""

    def coded(self, name: str) -> str | None:
        """`name`'s value when code gave it (the SDK's exporter must then be given it: it reads the variables)."""
        given = self.given.get(name)
        return None if given is None else given[1]

    def is_base(self, variable: str) -> bool:
        """Whether the endpoint given by `variable` is a base URL, each signal's path added to it."""
        return variable in (_BASE_ENDPOINT, self.given.get("ENDPOINT", ("", ""))[0])


def _as_variable(key: str, value: Any) -> str:
    """An option's value written as its standard variable holds it."""
    if key == "insecure":
        return "true" if value else "false"
    if key == "timeout_seconds":
        return repr(float(value))
    if key != "headers":
        return str(value).strip()
    written = []
    for name, text in value.items():
        if not isinstance(name, str) or not HEADER_NAME.fullmatch(name):
            raise ValueError(f"otlp['headers']: {name!r} is no header name")
        if not isinstance(text, str) or not _HEADER_VALUE.fullmatch(text):
            raise ValueError(
                f"otlp['headers']: the value of {name!r} is no header value (printable ASCII); its value is not shown"
            )
        written.append(f"{name}={quote(text.strip(), safe='')}")
    return ",".join(written)


FROM_ENVIRONMENT = OtlpConfig()


def protocol_for(signal: str, config: OtlpConfig = FROM_ENVIRONMENT) -> str:
    """The OTLP protocol for `signal` ("traces", "metrics"), as the SDK variables (or `config`) say."""
    value = config.variable(signal, "PROTOCOL")[1] or HTTP_PROTOBUF
    if value not in PROTOCOLS:
        raise ValueError(f"unsupported OTLP protocol {value!r} for {signal}: use one of {', '.join(PROTOCOLS)}")
    return value


def sdk_disabled() -> bool:
    """`OTEL_SDK_DISABLED`, read as the specification reads a boolean: only "true", in any case, is
    true; another value than "false" or empty is told (once) and read as false."""
    raw = os.environ.get("OTEL_SDK_DISABLED", "").strip()
    if raw.lower() == "true":
        return True
    if raw and raw.lower() != "false" and first_time("OTEL_SDK_DISABLED", raw):
        log.warning("OTEL_SDK_DISABLED=%s is neither true nor false: read as false, telemetry is exported", raw)
    return False


def exporter_named(signal: str) -> str:
    """`OTEL_TRACES_EXPORTER` / `OTEL_METRICS_EXPORTER` (a comma-separated list in the specification):
    otlp, the default and the first choice; console; none. `OTEL_SDK_DISABLED=true` turns both off, as
    it turns off the SDK's own providers (an application's tests set it to export nothing)."""
    if sdk_disabled():
        return "none"
    variable = f"OTEL_{signal.upper()}_EXPORTER"
    raw = os.environ.get(variable, "")
    named = {value.strip().lower() for value in raw.split(",") if value.strip()} or {"otlp"}
    if named == {"none"}:
        return "none"
    for exporter in ("otlp", "console"):
        if exporter in named:
            return exporter
    # An application's own value (zipkin, prometheus) must not stop the in-process tracker. Told once
    # (a bridge makes a trace sender per concurrent export).
    if first_time("exporter", variable, raw):
        log.warning("%s=%s: otel-bridge exports its %s over otlp (or console, none); using otlp", variable, raw, signal)
    return "otlp"


# What has been told once per process (a bridge makes a sender per concurrent export, a tracker a bridge).
_TOLD: set[tuple[str, ...]] = set()


def first_time(*what: str) -> bool:
    """True the first time `what` is asked about in this process."""
    if what in _TOLD:
        return False
    _TOLD.add(what)
    return True


def _readable(protocol: str, signal: str, config: OtlpConfig) -> None:
    """The endpoint variable `signal` is exported by, once it reads as a host and a port: with a
    bracket not closed, a port that is no number or past 65535, or no host at all, every export
    failed as if the backend were away (or the gRPC exporter failed the start: "Invalid IPv6 URL")."""
    variable, endpoint = config.variable(signal, "ENDPOINT")
    if "://" not in endpoint:
        return  # unset, or gRPC's `host:port`, which the SDK reads as TLS (`_told_if_tls_unasked`)
    why = host_problem(endpoint)
    if not why and protocol == "OTLP/gRPC" and urlsplit(endpoint).username is not None:
        # gRPC sends no user info: the channel took `user:password@host` for a host name, and every
        # export failed "resolving" it, the password in each failure told.
        why = "gRPC sends no user and password in the URL: give them as a header, OTEL_EXPORTER_OTLP_HEADERS"
    if why:
        shown = without_secrets(endpoint)
        raise ValueError(f"{variable}={shown!r}: the {protocol} {signal} endpoint does not parse ({why})")


# The TLS files the standard variables may name, and what each is to the export.
# In the order gRPC's channel credentials take them (root certificates, private key, certificate chain).
TLS_FILES = {
    "CERTIFICATE": "the CA the backend's certificate is checked against",
    "CLIENT_KEY": "the bridge's own key, for mutual TLS",
    "CLIENT_CERTIFICATE": "the bridge's own certificate, for mutual TLS",
}


def _tls_files_readable(signal: str, config: OtlpConfig) -> None:
    """Each TLS file the variables name for `signal`, once it is a file the bridge can read: a CA file
    that was not there failed every OTLP/HTTP export ("Could not find a suitable TLS CA certificate
    bundle"), told as a backend away, and the gRPC exporter logged a traceback and went on without it."""
    for name, what in TLS_FILES.items():
        variable, path = config.variable(signal, name)
        try:
            if path:
                with open(path, "rb"):
                    pass
        except OSError as exc:
            raise ValueError(f"{variable}={path!r} cannot be read ({exc.strerror}): it is {what}") from None
        if name == "CLIENT_KEY" and path and pem.encrypted(path):
            # The standard variables give no pass phrase: OpenSSL asked for it on the terminal (OTLP/HTTP), and
            # gRPC refused the key.
            raise ValueError(
                f"{variable}={path!r} is encrypted: the OTLP exporters take no pass phrase; give the key decrypted"
            )


# A header of `OTEL_EXPORTER_OTLP_HEADERS`: `name=value`, the name a token, the value printable ASCII
# without `"`, `,`, `;` or `\` (URL-encoded, or with spaces, as the SDK's liberal reading takes it).
_HEADER = re.compile(rf"[ \t]*{TOKEN}[ \t]*=[ \t]*[ !#-+\--:<-\[\]-~]*[ \t]*")
# Its name, where one stands before an `=` or a `:` (a lone token might be the credential itself).
_HEADER_NAME = re.compile(rf"[ \t]*({TOKEN})[ \t]*[=:]")


def _headers_readable(signal: str, config: OtlpConfig) -> None:
    """The headers the variables give `signal`'s export, once each is a `name=value` the SDK takes: it
    dropped one that was not (`x-api-key:…`, a colon for the `=`) and wrote it whole in its warning,
    the credential in it too, three times at every start — then every export was refused."""
    variable, raw = config.variable(signal, "HEADERS")
    for place, header in enumerate(re.split(r"[ \t]*,[ \t]*", raw), 1):
        if header and not _HEADER.fullmatch(header.strip()):
            named = _HEADER_NAME.match(header)
            which = f"the header {named.group(1)!r}" if named else f"its header number {place}"
            raise ValueError(
                f"{variable}: {which} is no name=value (comma-separated, the value URL-encoded where it "
                "holds a comma, a semicolon, a quote, a backslash or what is not ASCII); its value is not shown"
            )


def _can_read(signal: str, protocol: str, config: OtlpConfig) -> None:
    """What the SDK's exporter of `signal` will read, checked before it is made: its endpoint, its TLS
    files, and for gRPC its signal's timeout variable, which that exporter reads whatever timeout it is
    given (set but empty, it failed the start with a bare "could not convert string to float")."""
    _readable("OTLP/gRPC" if protocol == GRPC else "OTLP/HTTP", signal, config)
    _tls_files_readable(signal, config)
    _headers_readable(signal, config)
    timeout = f"OTEL_EXPORTER_OTLP_{signal.upper()}_TIMEOUT"
    if protocol == GRPC and timeout in os.environ and not os.environ[timeout].strip():
        raise ValueError(f"{timeout} is set but empty, which the OTLP/gRPC exporter cannot read: unset it")


_DEFAULT_TIMEOUT_SECONDS = 10.0
# Longer than any export request should wait; past it, the SDK's deadline overflowed a time_t.
_LONGEST_TIMEOUT_SECONDS = 86_400.0
# A timeout no backend across a network meets: most likely seconds meant, as the Python SDK reads them.
_SHORTEST_LIKELY_SECONDS = 0.1


def export_timeout(signal: str, config: OtlpConfig = FROM_ENVIRONMENT) -> float:
    """Seconds each export request of `signal` may take, from `OTEL_EXPORTER_OTLP_{SIGNAL}_TIMEOUT`, else
    `OTEL_EXPORTER_OTLP_TIMEOUT`, counted in `config`'s `timeout_unit` (its `timeout_seconds` in seconds;
    10 s when none is set). A value that is no number, not above 0 or past a day is a ValueError naming
    the variable: the SDK read `-5` and every export failed, `1e300` and every export failed, and its gRPC
    exporter failed the start on `abc` with a bare "could not convert string to float"."""
    variable, raw = config.variable(signal, "TIMEOUT")
    if not raw:
        return _DEFAULT_TIMEOUT_SECONDS
    unit = SECONDS if config.coded("TIMEOUT") is not None else config.timeout_unit  # `timeout_seconds`
    counted = "milliseconds" if unit == MILLISECONDS else "seconds"
    try:
        seconds = float(raw) * unit
    except ValueError:
        raise ValueError(f"{variable}={raw!r} is no number of {counted}") from None
    if not 0 < seconds <= _LONGEST_TIMEOUT_SECONDS:
        longest = _LONGEST_TIMEOUT_SECONDS / unit
        raise ValueError(f"{variable}={raw!r} must be above 0 and at most a day ({longest:,.0f} {counted})")
    if unit == MILLISECONDS and seconds < _SHORTEST_LIKELY_SECONDS and first_time("timeout", variable, raw):
        log.warning(
            "%s=%s is %g ms for each export request: the specification's unit, milliseconds, which "
            "otel-bridge reads (the Python SDK reads seconds); for %s seconds write %s",
            variable,
            raw,
            seconds * 1000,
            raw,
            f"{float(raw) * 1000:g}",
        )
    return seconds


def export_compression(signal: str, protocol: str, config: OtlpConfig = FROM_ENVIRONMENT) -> str:
    """How `signal`'s export requests are compressed, from `OTEL_EXPORTER_OTLP_{SIGNAL}_COMPRESSION`, else
    `OTEL_EXPORTER_OTLP_COMPRESSION`: gzip or none, as the specification has them (and deflate over
    OTLP/HTTP). Another value is a ValueError naming the variable: the SDK's HTTP exporter warned and sent
    uncompressed, its gRPC exporter failed the start with a traceback — on `none` too."""
    variable, raw = config.variable(signal, "COMPRESSION")
    if not raw:
        return "none"
    kinds = ("gzip", "none") if protocol == GRPC else ("gzip", "deflate", "none")
    if raw.lower() not in kinds:
        raise ValueError(f"{variable}={raw!r}: OTLP over {protocol} compresses with {', '.join(kinds)}")
    return raw.lower()


def _grpc_insecure(signal: str, config: OtlpConfig) -> bool:
    """Whether `signal`'s OTLP/gRPC export speaks plain text, as the specification decides it: by the
    endpoint's scheme when it has one (`http://` plain, `https://` TLS), else by
    `OTEL_EXPORTER_OTLP_{SIGNAL}_INSECURE` or `OTEL_EXPORTER_OTLP_INSECURE` (`true`: plain; else TLS).
    The SDK let any INSECURE value but `true` turn `http://collector:4317` into TLS, and every export
    failed its handshake with a plain-text Collector; a value neither true nor false is told (once)."""
    endpoint = config.variable(signal, "ENDPOINT")[1] or "http://localhost:4317"
    scheme = urlsplit(endpoint).scheme.lower() if "://" in endpoint else ""
    if scheme in ("http", "https"):
        return scheme == "http"
    variable, raw = config.variable(signal, "INSECURE")
    if raw and raw.lower() not in ("true", "false") and first_time(variable, raw):
        log.warning("%s=%s is neither true nor false: read as false, so %s go over TLS", variable, raw, signal)
    return raw.lower() == "true"


def exporter_arguments(signal: str, config: OtlpConfig) -> tuple[str, dict[str, Any]]:
    """The protocol of `signal`'s export, and what its SDK exporter is given rather than left to read from
    the variables (its timeout and compression, read and checked here, and what code gave in the
    variables' place); what it still reads is checked before it is made (`_can_read`)."""
    protocol = protocol_for(signal, config)
    timeout = export_timeout(signal, config)
    _can_read(signal, protocol, config)
    compression = export_compression(signal, protocol, config)
    given: dict[str, Any] = {"timeout": timeout}
    if protocol == GRPC:  # its headers given in code are set on it once made (`otlp_grpc`): it reads `{}` as none given
        import grpc  # gRPC's own modules: only when asked for

        kinds: dict[str, Any] = {"gzip": grpc.Compression.Gzip, "none": grpc.Compression.NoCompression}
        insecure = _grpc_insecure(signal, config)
        given |= {"compression": kinds[compression], "insecure": insecure, "config": config}
        if (endpoint := config.coded("ENDPOINT")) is not None:
            given["endpoint"] = endpoint
        return protocol, given
    kinds = {"gzip": Compression.Gzip, "deflate": Compression.Deflate, "none": Compression.NoCompression}
    given["compression"] = kinds[compression]
    if (headers := config.coded("HEADERS")) is not None:
        given["headers"] = parsed_headers(headers)  # added to the variable's: `otlp._headers_in_place` takes those off
    if endpoint := _joined_to_the_base(signal, config):
        given["endpoint"] = endpoint
    for name, keyword in zip(
        TLS_FILES, ("certificate_file", "client_key_file", "client_certificate_file"), strict=True
    ):
        if (path := config.coded(name)) is not None:
            given[keyword] = path
    return protocol, given


def parsed_headers(headers: str) -> dict[str, str]:
    """Headers written as `OTEL_EXPORTER_OTLP_HEADERS` holds them, read as the SDK reads that variable."""
    return dict(parse_env_headers(headers, liberal=True))


def _joined_to_the_base(signal: str, config: OtlpConfig) -> str | None:
    """`signal`'s OTLP/HTTP URL where the SDK would not make it right, or does not know the base: the
    signal's path added to the base's path. Where the base endpoint has a query (a gateway's
    `?api-key=…`) or a fragment, the SDK adds it to the end of the text, so `http://gw:4318/?key=k` sent
    every export to `/` with the query `key=k/v1/traces`: the gateway's 404. A base given in code the
    SDK's exporter never reads: it is given the URL."""
    variable, given = config.variable(signal, "ENDPOINT")
    if not config.is_base(variable) or not given:
        return None  # unset, or a signal's own endpoint, used as it is given
    base = urlsplit(given)
    if not (base.query or base.fragment) and variable == _BASE_ENDPOINT:
        return None
    return urlunsplit(base._replace(path=f"{base.path.rstrip('/')}/v1/{signal}", fragment=""))


def _told_if_asked_otherwise(variable: str, meant: tuple[str, ...], what: str) -> None:
    """`variable` asks for what the bridge does not do (a value not in `meant`, "" being unset): told
    once, with what it does instead, not silently ignored."""
    raw = os.environ.get(variable, "").strip()
    if raw.lower() not in meant and first_time(variable, raw):
        log.warning("%s=%s: %s", variable, raw, what)


def told_if_delta_asked() -> None:
    # Cumulative, so that what a failed export did not send goes out whole with the next.
    _told_if_asked_otherwise(
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
        ("", "cumulative"),
        "otel-bridge exports its metrics cumulative; a backend that takes delta only gets them through the "
        "Collector's cumulativetodelta processor",
    )


def told_if_exponential_asked() -> None:
    # Explicit buckets from 5 ms to 30 days, as Prometheus, Grafana's panels and the alert rules read them.
    _told_if_asked_otherwise(
        "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION",
        ("", "explicit_bucket_histogram"),
        "otel-bridge exports its histograms with explicit buckets, from 5 ms to 30 days (workflows sleep for "
        "days), which its dashboards and alert rules read",
    )
