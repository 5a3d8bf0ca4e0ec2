"""`otel-bridge replay FILE`: a file of events, one JSON event per line, through the same pipeline;
or a dead-letter file, each event to the decoder of the receiver that kept it. A line of
durable-effect events may also be a batch as producers POST it (`{"events": [...]}`): bodies logged
by a proxy or a tracking service of one's own are replayed as they were kept; a line that is an
array holds events (or batches) too.

A file that is one JSON document spread over lines — an array of events as a tracking service or a
database exports them, a pretty-printed batch, `jq .`'s output — is read as one, the items of its
array one at a time as they are parsed (ijson): a file of any length is read in flat memory.

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
from functools import partial
from pathlib import Path
from typing import IO, Any, NamedTuple, cast

import ijson
from tqdm import tqdm

from otel_bridge.consumer import EventConsumer, Rejection, Unavailable
from otel_bridge.json_text import BOM, loads
from otel_bridge.receivers.dead_letter import POSTED, DeadLetters, NotReplayable, unwrap
from otel_bridge.sources.wire import json_kind
from otel_bridge.state.store import DAMAGE_REJECTED

BATCH = 1000


class At(NamedTuple):
    """Where an event was in the file: its line (or the item of the document it is: `unit`), and its index
    in the line's batch or array when the line is one."""

    line: int
    within: int | None = None
    unit: str = "line"

    def __str__(self) -> str:
        at = f"{self.unit} {self.line}"
        return at if self.within is None else f"{at} events[{self.within}]"


@dataclass(slots=True)
class ReplaySummary:
    # The lines read, or the items of the document the file is (`unit` "item").
    lines: int = 0
    unit: str = "line"
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
        unit = self.unit
        out = [
            f"{unit}s: {self.lines}{held}  accepted: {self.accepted}  duplicates: {self.duplicates}  "
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
            stored = f"the {unit}s before it are stored" if self.lines else "nothing of it is stored"
            out.append(f"the file cannot be read from {unit} {line} on ({reason}); {stored}")
        if self.stopped is not None:
            line, reason = self.stopped
            out.append(
                f"stopped at {unit} {line}: {reason}. The {unit}s before it are stored (their spans go out "
                "with the next start if not yet); replay the same file again to go on: what is stored "
                "already counts as duplicates."
            )
        return "\n".join(out)


_INTERRUPTED = "interrupted"


class _Stopped(Exception):
    pass


class _Broken(Exception):
    """The file cannot be read from `at` on (truncated, corrupt, not JSON past a point of its document)."""

    def __init__(self, at: int, reason: str) -> None:
        super().__init__(reason)
        self.at = at


class _NotJson(NamedTuple):
    error: str
    text: str


def _opened(source: str) -> IO[bytes] | gzip.GzipFile:
    """Standard input, a file, or a gzip-compressed file (`.gz`), as logs are kept."""
    if source == "-":
        return sys.stdin.buffer
    if source.endswith(".gz"):
        return gzip.open(source, "rb")
    return Path(source).open("rb")


def _values(
    stream: Iterable[bytes], summary: ReplaySummary, read: Callable[[int], object], documents: bool
) -> Iterator[tuple[int, Any]]:
    """The file's values, numbered: a line each (`_NotJson` for a line that is not), or the items of the one
    document the file is when its first line opens one and says no more (`documents`; the summary then
    counts items). Raises `_Broken` where the file cannot be read on.

    A file that begins with an array (`[`: no event is one) is read as a document from its first byte, in
    chunks: an export written on one line (`json.dump`, `jq -c .`) would otherwise be read whole as its first
    line, and parsed whole."""
    if documents and _opens_an_array(stream):
        summary.unit = "item"
        raw = cast(IO[bytes], stream)
        head = raw.read(_CHUNK)
        read(len(head))
        yield from _items(_chunks(head.removeprefix(BOM), iter(partial(raw.read, _CHUNK), b""), read))
        return
    lines = iter(stream)
    number, first = 0, True
    while True:
        try:
            line = next(lines)
        except StopIteration:
            return
        except (OSError, EOFError) as exc:  # truncated or corrupt (gzip): what was read is stored
            raise _Broken(number + 1, str(exc) or type(exc).__name__) from exc
        number += 1
        if number == 1:
            line = line.removeprefix(BOM)  # a first line holding only it is blank, and skipped
        if not line.strip():
            continue
        read(len(line))
        try:
            value = loads(line)
        except ValueError as exc:
            if first and _opens_a_document(line):
                if not documents:  # every line of it rejected and kept would do no good
                    raise _Broken(number, _SPREAD) from exc
                summary.unit = "item"
                yield from _items(_chunks(line, lines, read))
                return
            value = _NotJson(str(exc), line.decode(errors="replace"))
        first = False
        yield number, value


def _items(chunks: Iterator[bytes]) -> Iterator[tuple[int, Any]]:
    """The items of the document `chunks` hold, numbered from 1: the items of an array as each is parsed
    (an array's whole is never in memory), any other value whole — a file of values one after another
    (`jq .`'s output), or of arrays and values mixed, loses none. yajl's events (in C) built into values
    here: 0.9 s for 80,000 events, where building only an array's items in C took 0.2 s and passed over
    a value after an array without a word."""
    events = ijson.sendable_list()
    parser = ijson.parse_coro(events, multiple_values=True, use_float=True)
    number, broken, ended = 0, None, False  # broken: why the file cannot be read on, once its items before are told
    depth, in_array, builder = 0, False, ijson.ObjectBuilder()
    while not ended:
        try:
            chunk = next(chunks, None)
            if chunk is None:
                ended = True
                parser.close()
            else:
                parser.send(chunk)
        except (OSError, EOFError) as exc:
            broken = str(exc) or type(exc).__name__
        except ijson.JSONError as exc:
            # yajl's words, then the text where it stopped and a line pointing at it: the words and the text.
            said, near, *_ = [*str(exc).splitlines(), "", ""]
            broken = f"not JSON: {said}" + (f" at `{near.strip()}`" if near.strip() else "")
        for prefix, event, value in events:  # the items whole before where it broke too
            if depth == 0:
                if prefix == "" and event == "start_array" and not in_array:
                    in_array = True  # a document's array: its items are the values
                    continue
                if prefix == "" and event == "end_array" and in_array:
                    in_array = False
                    continue
                builder = ijson.ObjectBuilder()
            builder.event(event, value)
            if event in _OPENS:
                depth += 1
            elif event in _CLOSES:
                depth -= 1
            if depth == 0:
                number += 1
                yield number, builder.value
        del events[:]
        if broken is not None:
            raise _Broken(number + 1, broken)


_OPENS = frozenset(("start_map", "start_array"))
_CLOSES = frozenset(("end_map", "end_array"))


def _opens_an_array(stream: Iterable[bytes]) -> bool:
    """Whether the file's first bytes (a BOM and blanks aside) open an array: looked at without being read."""
    peek = getattr(stream, "peek", None)
    if peek is None:  # lines handed over as such (a salvage's): read as lines
        return False
    return bool(peek(_CHUNK)[:_CHUNK].removeprefix(BOM).lstrip().startswith(b"["))


_CHUNK = 1 << 16


def _chunks(first: bytes, rest: Iterator[bytes], read: Callable[[int], object], size: int = _CHUNK) -> Iterator[bytes]:
    """`first` and what follows it (lines, or reads of a file) as chunks of about `size` bytes: a pretty-printed
    document has millions of short lines."""
    chunk = [first]
    held = len(first)
    for line in rest:
        read(len(line))
        chunk.append(line)
        held += len(line)
        if held >= size:
            yield b"".join(chunk)
            chunk, held = [], 0
    if chunk:
        yield b"".join(chunk)


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
        summary.rejected.append((At(number, unit=summary.unit), rejection))
        dead_letters.keep(f"replay:{source}", [({summary.unit: number, "error": rejection.error}, kept)])

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
            letter = {at.unit: at.line, "format": event_format, **r.as_dict()}
            if at.within is not None:
                letter["within"] = at.within
            kept.append((letter, batch.events[r.index]))
        dead_letters.keep(f"replay:{source}", kept)

    number = 0
    # A dead-letter file is the bridge's own, a letter a line: never a document.
    values = _values(stream if stream is not None else lines or (), summary, bar.update, source_format != DEAD_LETTER)
    try:
        while True:
            try:
                number, event = next(values)
            except StopIteration:
                break
            except _Broken as exc:  # what was read is stored
                summary.broken = (exc.at, str(exc))
                break
            summary.lines += 1
            unit = summary.unit
            if isinstance(event, _NotJson):
                reject(number, f"line is not valid JSON: {event.error}", event.text)
                continue
            event_format = source_format
            if source_format == DEAD_LETTER:
                try:
                    event_format, event = unwrap(event)
                except NotReplayable as exc:
                    # Kept again would only copy the line: the file it came from still has it.
                    summary.rejected.append((At(number), Rejection(-1, None, "", str(exc))))
                    continue
            held = event.get("events") if source_format == POSTED and _is_a_batch(event) else event
            if held is not event and not isinstance(held, list):
                reject(number, f'"events" must be an array, not {json_kind(held)}', event)
                continue
            if isinstance(held, list) and source_format != DEAD_LETTER:  # a batch, or an array of events
                placed = [(inner, At(number, within, unit)) for within, inner in enumerate(held)]
                summary.batch_lines += 1
                summary.batched += len(placed)
            else:
                placed = [(event, At(number, unit=unit))]
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
    "it opens one JSON document spread over lines, where a dead-letter file holds one letter per line, as the "
    "bridge writes them: `jq -c '.[]' FILE` writes an array's one per line"
)


def _opens_a_document(line: bytes) -> bool:
    """A first line, not JSON itself, that opens an array (`[`, `[{"type": …},`: no event is an array), or an
    object and says no more of it (`{`, `{"events": [`): a document spread over lines, not a truncated event."""
    return line.lstrip().startswith(b"[") or line.rstrip().endswith((b"{", b"["))


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
