"""`Retry-After`: how long a server that refused a request for now asks to be left (RFC 9110 §10.2.3).

The bridge meets it three ways: its producers' tracker reading the bridge's own 503s, the span
export reading a backend's 429 or 503 (OTLP/HTTP: the client SHOULD honour it), and the Phase-10
follower reading the engine's API behind a rate limiter.
"""

import math
import time
from datetime import UTC
from email.utils import parsedate_to_datetime


def seconds_asked(value: str | None, now: float | None = None) -> float | None:
    """The seconds `value` (delay-seconds, or an HTTP-date) asks to wait from `now` (the epoch's
    seconds, the clock's when None), at least 0; None when there is none or it does not read as
    either (`nan` and `inf` included: a wait nobody could keep)."""
    if not value or not (value := value.strip()):
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            at = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if at.tzinfo is None:  # `-0000` ("no zone known") reads as naive: an HTTP-date is GMT
            at = at.replace(tzinfo=UTC)
        seconds = at.timestamp() - (time.time() if now is None else now)
    return max(seconds, 0.0) if math.isfinite(seconds) else None
