"""The certificate the HTTP endpoint serves, taken again from its files as they are renewed.

Certificates are renewed on disk while a server runs — cert-manager rewrites a Secret's files a month
before they end, certbot every sixty days — and a server that read them once serves the old one until it
expires, when every producer refuses it (and drops its batches after three re-sends). The files are
looked at every `tls_reload_seconds`; once changed and read whole (a certificate and the key that goes
with it), new connections are served from a new context: the served context's SNI callback, called at
every handshake, hands it the newest one, so no handshake meets a context half changed, and connections
already open keep theirs. Files caught mid-write (the key before its certificate) are taken at a later
look, the certificate before them served meanwhile.
"""

import asyncio
import logging
import signal
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import SecretStr

from otel_bridge.certificates import SOON_SECONDS, TlsFilesError, expiration, refused_by_clients, when_it_ends

log = logging.getLogger(__name__)


class _Encrypted(Exception):
    """The served key is encrypted and no pass phrase is given."""


def server_context(certfile: Path, keyfile: Path | None, password: SecretStr | None) -> ssl.SSLContext:
    """A server context of the files. TlsFilesError naming them when they cannot be served: OpenSSL's own
    error names neither file ("No such file or directory", "[SSL] PEM lib"), and an encrypted key without
    its pass phrase would be asked for on the terminal (a service started from one waited there)."""
    files = f"{certfile}" + (f" (key {keyfile})" if keyfile is not None else "")

    def asked() -> str:
        if password is None:
            raise _Encrypted()
        return password.get_secret_value()

    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        tls.load_cert_chain(certfile, keyfile, password=asked)
    except _Encrypted:
        raise TlsFilesError(
            f"the TLS key of {files} is encrypted: give its pass phrase (tls_keyfile_password, "
            "OTEL_BRIDGE_TLS_KEYFILE_PASSWORD), or the key decrypted"
        ) from None
    except ssl.SSLError as exc:
        said = exc.reason or exc.strerror or exc  # OpenSSL's "PEM lib" comes with no reason
        wrong = ", or the pass phrase (tls_keyfile_password) is not its" if password is not None else ""
        raise TlsFilesError(
            f"cannot use the TLS certificate {files}: not a PEM certificate and its key{wrong} ({said})"
        ) from None
    except OSError as exc:
        raise TlsFilesError(f"cannot read the TLS certificate {files}: {exc.strerror or exc}") from None
    return tls


def _contents(path: Path | None) -> bytes | None:
    """What a file holds now (a few KB, read at each look: a time or a size would miss a file rewritten within
    the clock's tick, as a test does, or to the same length); None when it cannot be read for a moment."""
    if path is None:
        return b""
    try:
        return path.read_bytes()
    except OSError:
        return None


class ServedCertificate:
    """`context` is what the server serves with, from the files given, as they are renewed (`look`)."""

    def __init__(
        self,
        certfile: Path,
        keyfile: Path | None,
        password: SecretStr | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._files = certfile, keyfile, password
        self._clock = clock
        self._seen = self._held()
        self.context = self._newest = server_context(*self._files)
        self.expires_at = expiration(certfile)
        self.renewals = 0
        self._refused: str | None = None  # the files' last refusal, told once until they change again
        self.context.sni_callback = self._hand_newest
        self._tell_what_is_served("serving")

    def _held(self) -> tuple[bytes | None, bytes | None]:
        certfile, keyfile, _password = self._files
        return _contents(certfile), _contents(keyfile)

    def _hand_newest(
        self, connection: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _given: ssl.SSLContext
    ) -> None:
        if self._newest is not self.context:
            connection.context = self._newest

    def look(self) -> bool:
        """Take the files again if they changed since they were last taken: True when a renewed certificate is
        served from now on."""
        seen = self._held()
        if seen == self._seen:
            return False
        try:
            fresh, ends = server_context(*self._files), expiration(self._files[0])
        except TlsFilesError as exc:
            if str(exc) != self._refused:  # the same refusal is told once: the files are looked at again
                self._refused = str(exc)
                log.warning(
                    "the renewed TLS certificate is not served yet: %s; the one before is served meanwhile", exc
                )
            return False
        self._seen, self._newest, self.expires_at, self._refused = seen, fresh, ends, None
        self.renewals += 1
        self._tell_what_is_served("serving the renewed")
        return True

    def _tell_what_is_served(self, serving: str) -> None:
        ends, days = when_it_ends(self.expires_at, self._clock())
        certfile = self._files[0]
        for refused in refused_by_clients(certfile):
            log.warning("%s", refused)
        if days <= 0:
            log.error("%s TLS certificate %s, which ended %s: clients refuse it", serving, certfile, ends)
        elif days * 86400 < SOON_SECONDS:
            log.warning("%s TLS certificate %s, which ends %s (in %.1f days)", serving, certfile, ends, days)
        else:
            log.info("%s TLS certificate %s, which ends %s", serving, certfile, ends)


def look_again(served: ServedCertificate | None, every_seconds: float) -> None:
    """On the running event loop (where the handshakes are): look at the files every `every_seconds`, and at
    once on SIGHUP (`systemctl reload`, certbot's deploy hook), as daemons reload on it — its default ended
    the bridge there and then, without the drain a SIGTERM has. Without TLS, SIGHUP is said to reload nothing."""
    loop = asyncio.get_running_loop()

    def hung_up() -> None:
        if served is None:
            log.info(
                "SIGHUP: nothing to read again (the settings are read at start: restart the bridge to change them)"
            )
        elif not served.look():
            log.info("SIGHUP: the TLS certificate's files are as they were")

    if served is not None:
        loop.call_later(every_seconds, _look_every, loop, served, every_seconds)
    if threading.current_thread() is threading.main_thread():  # where signals are listened to (as uvicorn's own)
        signal.signal(signal.SIGHUP, lambda _signal, _frame: loop.call_soon_threadsafe(hung_up))


def _look_every(loop: asyncio.AbstractEventLoop, served: ServedCertificate, seconds: float) -> None:
    try:
        served.look()
    except Exception:  # a bug of the look's own: the certificate taken is still served, and looked at again
        log.exception("looking at the TLS certificate's files failed")
    loop.call_later(seconds, _look_every, loop, served, seconds)
