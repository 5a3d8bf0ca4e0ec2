"""An HTTP batch tracker for Python producers, with the durable-effect engine's contract.

`emit` buffers an event (enriched with `env` and `serviceKey`), `flush` POSTs the
buffer as `{"events": [...]}`, `pending` tells how many are buffered. A full buffer
(`batch_size`) flushes by itself. A failed POST (non-2xx or network error) is re-sent
identically `retry_attempts` more times with exponential backoff, then dropped — the
same behaviour as the engine's HttpBatchTracker, so it exercises a bridge the way
production traffic does.
"""

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

log = logging.getLogger(__name__)


@dataclass
class TrackerStats:
    posts: int = 0
    events: int = 0
    retries: int = 0
    dropped_batches: int = 0
    dropped_events: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


class HttpBatchTracker:
    def __init__(
        self,
        endpoint: str,
        env: str,
        service_key: str,
        batch_size: int = 100,
        headers: dict[str, str] | None = None,
        retry_attempts: int = 3,
        initial_delay_ms: float = 1000,
        client: httpx.Client | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.env = env
        self.service_key = service_key
        self.batch_size = batch_size
        self.retry_attempts = retry_attempts
        self.initial_delay = initial_delay_ms / 1000
        self._client = client or httpx.Client(timeout=30)
        self._headers = {"content-type": "application/json"} | (headers or {})
        self._buffer: list[dict[str, Any]] = []
        self.stats = TrackerStats()

    def emit(self, event: dict[str, Any]) -> None:
        self._buffer.append(event | {"env": self.env, "serviceKey": self.service_key})
        if len(self._buffer) >= self.batch_size:
            self.flush()

    def pending(self) -> int:
        return len(self._buffer)

    def flush(self) -> bool:
        """POST the buffer; True when the bridge took it."""
        if not self._buffer:
            return True
        batch, self._buffer = self._buffer, []
        body = {"events": batch}
        for attempt in range(self.retry_attempts + 1):
            if attempt:
                self.stats.retries += 1
                time.sleep(self.initial_delay * 2 ** (attempt - 1))
            try:
                response = self._client.post(self.endpoint, json=body, headers=self._headers)
            except httpx.HTTPError as exc:
                log.warning("tracker POST failed: %s", exc)
                continue
            finally:
                self.stats.posts += 1
            self.stats.statuses[response.status_code] = self.stats.statuses.get(response.status_code, 0) + 1
            if response.is_success:
                self.stats.events += len(batch)
                return True
        self.stats.dropped_batches += 1
        self.stats.dropped_events += len(batch)
        return False

    def close(self) -> None:
        self.flush()
        self._client.close()
