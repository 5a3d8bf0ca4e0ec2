"""`otel-bridge replay FILE`: a file of events, one JSON event per line, through the same pipeline;
or a dead-letter file, each event to the decoder of the receiver that kept it. A line of
durable-effect events may also be a batch as producers POST it (`{"events": [...]}`): bodies logged
by a proxy or a tracking service of one's own are replayed as they were kept.

A batch the bridge refuses for now (the export backlog full, the store busy or full) is
offered again for as long as `waits` says so, as a producer honours Retry-After; when it
says no more, the replay stops at that batch's first line and says how to go on.
"""

import gzip
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

from tqdm import tqdm

from otel_bridge.consumer import EventConsumer, Rejection, Unavailable
from otel_bridge.json_text import BOM, loads
from otel_bridge.receivers.dead_letter import POSTED, DeadLetters, NotReplayable, unwrap
from otel_bridge.sources.wire import json_kind
from otel_bridge.state.store import DAMAGE_REJECTED

BATCH = 1000


class At(NamedTuple):
    """Where an event was in the file: its line, and its index in the line's batch when the line is one."""

    line: int
    within: int | None = None

    def __str__(self) -> str:
        return f"line {self.line}" if self.within is None else f"line {self.line} events[{self.within}]"


@dataclass(slots=True)
class ReplaySummary:
    lines: int = 0
    # The lines that held a batch (`{"events": [...]}`), and the events they held: every other line is one.
    batch_lines: int = 0
    batched: int = 0
    accepted: int = 0
    duplicates: int = 0
    late: int = 0
    rejected: list[tuple[At, Rejection]] = field(default_factory=list)
    # (the first line not stored, why) when the bridge kept refusing a batch, or on Ctrl-C
    stopped: tuple[int, str] | None = None
    # (the first line that could not be read, why): a truncated or corrupt file
    broken: tuple[int, str] | None = None

    @property
    def interrupted(self) -> bool:
        return self.stopped is not None and self.stopped[1] == _INTERRUPTED

    def render(self, max_reasons: int = 20) -> str:
        held = f"  events: {self.lines - self.batch_lines + self.batched}" if self.batch_lines else ""
        out = [
            f"lines: {self.lines}{held}  accepted: {self.accepted}  duplicates: {self.duplicates}  "
            f"late: {self.late}  rejected: {len(self.rejected)}"
        ]
        # In the file's order: a batch's lines that are not JSON are told before the ones its decoder refused.
        in_order = sorted(self.rejected, key=lambda rejected: (rejected[0].line, rejected[0].within or 0))
        for at, r in in_order[:max_reasons]:
            out.append(f"  {at}: {r.error}" + (f" (eventId {r.event_id})" if r.event_id else ""))
        if len(self.rejected) > max_reasons:
            out.append(f"  … and {len(self.rejected) - max_reasons} more (see the dead-letter file)")
        if self.broken is not None:
            line, reason = self.broken
            stored = "the lines before it are stored" if self.lines else "nothing of it is stored"
            out.append(f"the file cannot be read from line {line} on ({reason}); {stored}")
        if self.stopped is not None:
            line, reason = self.stopped
            out.append(
                f"stopped at line {line}: {reason}. The lines before it are stored (their spans go out "
                "with the next start if not yet); replay the same file again to go on: what is stored "
                "already counts as duplicates."
            )
        return "\n".join(out)


_INTERRUPTED = "interrupted"


class _Stopped(Exception):
    pass


def _opened(source: str) -> IO[bytes] | gzip.GzipFile:
    """Standard input, a file, or a gzip-compressed file (`.gz`), as logs are kept."""
    if source == "-":
        return sys.stdin.buffer
    if source.endswith(".gz"):
        return gzip.open(source, "rb")
    return Path(source).open("rb")


def _lines(stream: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    for number, line in enumerate(stream, start=1):
        if number == 1:
            line = line.removeprefix(BOM)  # a first line holding only it is blank, and skipped
        if line.strip():
            yield number, line


def replay(
    consumers: Mapping[str, EventConsumer],
    source: str,
    dead_letters: DeadLetters,
    progress: bool = True,
    waits: Callable[[Unavailable, float], bool] = lambda _refused, _waited: False,
    source_format: str = POSTED,
    lines: Iterable[bytes] | None = None,
) -> ReplaySummary:
    """Each line an event in `source_format` (a key of `consumers`), or with "dead-letter" a line of
    a dead-letter file, whose event goes to the consumer of the format it was received in.

    `lines`: the lines themselves, `source` only naming them (the receiver of their rejections).

    `waits(refusal, seconds the batch has been refused)`: True after waiting a while (offer it
    again), False to stop the replay there."""
    summary = ReplaySummary()
    stream = _opened(source) if lines is None else None
    # Progress in bytes read; a gzip file's decompressed size is not known ahead.
    total = None if stream is None or source == "-" or source.endswith(".gz") else Path(source).stat().st_size
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="replay", disable=not progress, file=sys.stderr)
    # One batch per format: a dead-letter file mixes the engines' events.
    batches: dict[str, _Batch] = {}

    def reject(number: int, error: str, kept: Any) -> None:
        rejection = Rejection(-1, None, "", error)
        summary.rejected.append((At(number), rejection))
        dead_letters.keep(f"replay:{source}", [({"line": number, "error": rejection.error}, kept)])

    def flush(event_format: str) -> None:
        batch = batches[event_format]  # pending until stored: an interrupt names its first line
        refused_at = None
        while True:
            try:
                report = consumers[event_format].ingest(batch.events)
                break
            except Unavailable as exc:
                now = time.monotonic()
                waited = 0.0 if refused_at is None else now - refused_at
                refused_at = refused_at or now
                if not waits(exc, waited):
                    summary.stopped = (_first_pending(batches), str(exc))
                    raise _Stopped from exc
        del batches[event_format]
        summary.accepted += report.accepted
        summary.duplicates += report.duplicates
        summary.late += report.late
        kept = []
        for r in report.rejected:
            at = batch.places[r.index]
            summary.rejected.append((at, r))
            # Its format said: offered again from this dead-letter file, it goes to the same decoder.
            letter = {"line": at.line, "format": event_format, **r.as_dict()}
            if at.within is not None:
                letter["within"] = at.within
            kept.append((letter, batch.events[r.index]))
        dead_letters.keep(f"replay:{source}", kept)

    number = 0
    numbered = _lines(stream if stream is not None else lines or ())
    try:
        while True:
            try:
                number, line = next(numbered)
            except StopIteration:
                break
            except (OSError, EOFError) as exc:  # truncated or corrupt (gzip): what was read is stored
                summary.broken = (number + 1, str(exc) or type(exc).__name__)
                break
            bar.update(len(line))
            try:
                event = loads(line)
            except ValueError as exc:
                if not summary.lines and _opens_a_document(line):
                    # Every line of it would be rejected and kept, one by one, for nothing.
                    summary.broken = (number, _SPREAD)
                    break
                summary.lines += 1
                reject(number, f"line is not valid JSON: {exc}", line.decode(errors="replace"))
                continue
            summary.lines += 1
            event_format = source_format
            if source_format == DEAD_LETTER:
                try:
                    event_format, event = unwrap(event)
                except NotReplayable as exc:
                    # Kept again would only copy the line: the file it came from still has it.
                    summary.rejected.append((At(number), Rejection(-1, None, "", str(exc))))
                    continue
            if source_format == POSTED and _is_a_batch(event):
                if not isinstance(event["events"], list):
                    reject(number, f'"events" must be an array, not {json_kind(event["events"])}', event)
                    continue
                placed = [(inner, At(number, within)) for within, inner in enumerate(event["events"])]
                summary.batch_lines += 1
                summary.batched += len(placed)
            else:
                placed = [(event, At(number))]
            for inner, at in placed:
                batch = batches.setdefault(event_format, _Batch())
                batch.events.append(inner)
                batch.places.append(at)
                if len(batch.events) >= BATCH:
                    flush(event_format)
        for event_format in list(batches):
            flush(event_format)
    except _Stopped:
        pass
    except KeyboardInterrupt:
        # From the first line of a batch being read or stored: stored or not (interrupted right
        # after its commit), it is offered again by the next replay, as duplicates if need be.
        summary.stopped = (_first_pending(batches) or max(number, 1), _INTERRUPTED)
    finally:
        bar.close()
        if stream is not None and stream is not sys.stdin.buffer:
            stream.close()
    return summary


DEAD_LETTER = "dead-letter"
_SPREAD = (
    'it opens one JSON document spread over lines, where replay reads one JSON event, or one {"events": [...]} '
    "batch, per line: `jq -c '.events[]' FILE` (or `jq -c '.[]'` for an array) writes them so"
)


def _opens_a_document(line: bytes) -> bool:
    """A first line that opens an object or an array and says no more (`{`, `{"events": [`): a
    pretty-printed document, not a truncated event."""
    return line.rstrip().endswith((b"{", b"["))


def _is_a_batch(line: Any) -> bool:
    """A line of the `POSTED` format that is a batch as the HTTP endpoint takes it, not an event: no event of
    the format is without its `type`, and none has `events`."""
    return isinstance(line, dict) and "events" in line and "type" not in line


def rejected_for_damage(path: Path, backups: int, since: str) -> Iterator[bytes]:
    """The lines of the dead-letter file at `path` and its `backups` rotated ones (oldest first) that kept
    an event rejected for a damaged state file (`DAMAGE_REJECTED`) at `since` (ISO time, UTC) or later:
    what `replay` of them as "dead-letter" lines offers again."""
    marker = DAMAGE_REJECTED.encode()
    for file in [*(Path(f"{path}.{n}") for n in range(backups, 0, -1)), path]:
        try:
            stream = file.open("rb")
        except FileNotFoundError:
            continue
        with stream:
            # What the files held as the read began: an event rejected again as it is offered is kept at
            # the end, and is not read back (were the fresh file damaged too, it would go round for ever).
            left = os.fstat(stream.fileno()).st_size
            for line in stream:
                left -= len(line)
                if left < 0:
                    break
                if marker not in line:  # most lines: not parsed
                    continue
                try:
                    letter = loads(line)
                except ValueError:
                    continue
                if not isinstance(letter, dict) or not str(letter.get("error", "")).startswith(DAMAGE_REJECTED):
                    continue
                if str(letter.get("at", "")) >= since:
                    yield line


@dataclass(slots=True)
class _Batch:
    events: list[Any] = field(default_factory=list)
    places: list[At] = field(default_factory=list)


def _first_pending(batches: dict[str, _Batch]) -> int:
    """The first line not known stored: every line before it is (a line's batch may be partly stored:
    offered again, what was is a duplicate)."""
    return min((batch.places[0].line for batch in batches.values() if batch.places), default=0)
