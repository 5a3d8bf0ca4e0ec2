"""What every source's wire models share: times OTLP can carry, identities without control
characters, bounded numbers, the decode error naming a field, and what a payload may reveal."""

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, Field, GetCoreSchemaHandler, GetJsonSchemaHandler, ValidationError
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, ErrorDetails, core_schema

from otel_bridge.json_text import JSON_DEPTH
from otel_bridge.lifecycle import AttributeValue
from otel_bridge.tokens import MAX_IDENTITY

# OTLP carries times as unsigned 64-bit nanoseconds since 1970: 2554-07-21T23:34:33Z is the last one.
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(2554, 7, 21, tzinfo=UTC)
_NOT_ISO = "must be an ISO-8601 timestamp string"
_OUT_OF_RANGE = "must lie between 1970-01-01 and 2554-07-21 (UTC): OTLP cannot carry other times"


def utc(moment: datetime) -> datetime:
    """A time without an offset is UTC (the Phase-10 engine writes its times so)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


class _IsoTime:
    """A time OTLP can carry, sent as ISO-8601 text: its type and range checked by pydantic's compiled
    validators, where two Python ones cost ~1 µs an event (every event's time passes here).

    pydantic would read a number as Unix seconds; the engine only sends text, so a number is a bug
    on the producer's side worth naming. A time without an offset is UTC (the Phase-10 engine writes
    its times so): the bounds compare it so, and it comes out aware (`utc`, the one Python step), so
    that whatever reads it (a Phase-10 event id hashes its text) reads one time one way.
    """

    @classmethod
    def __get_pydantic_core_schema__(cls, _source: Any, _handler: GetCoreSchemaHandler) -> CoreSchema:
        text = core_schema.union_schema(
            [core_schema.str_schema(strict=True), core_schema.is_instance_schema(datetime)],
            custom_error_type="iso_time_type",
            custom_error_message=_NOT_ISO,
        )
        moment = core_schema.datetime_schema(ge=_EARLIEST, lt=_LATEST)
        return core_schema.chain_schema([text, core_schema.no_info_after_validator_function(utc, moment)])

    @classmethod
    def __get_pydantic_json_schema__(cls, _schema: CoreSchema, _handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"type": "string", "format": "date-time", "description": "ISO-8601, 1970-01-01 to 2554-07-21 (UTC)"}


# U+001F separates the fields of the hashes that make trace ids: an identity holding it (or any
# control character) could make two producers' runs share one trace. A pattern, checked by
# pydantic's own regex engine: a Python validator per identity cost 3 % of the bridge's work.
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
CONTROL_CHARACTERS = "must not contain control characters (U+0000-U+001F, U+007F)"
# Producers' counts and durations: bounded so that no sum or conversion to nanoseconds overflows.
_MAX_MS = 2**63 / 1e6 / 2

IsoTime = Annotated[datetime, _IsoTime]
Identity = Annotated[str, Field(min_length=1, max_length=MAX_IDENTITY, pattern=PRINTABLE)]
Label = Annotated[str, Field(max_length=MAX_IDENTITY, pattern=PRINTABLE)]


class _Text:
    """A text that is no identity (a workflow's, step's or job's name, a reason, an execution id), kept to
    `MAX_TEXT` characters: every fact of a step holds its name, and one of a megabyte (a payload sent in
    the wrong field) stayed so in the run's facts, in memory and in the store, to be cut at every export.
    Cut, not refused: the event and its run's trace are kept. A text within the bound passes pydantic's
    compiled check alone; only a longer one costs a Python call."""

    @classmethod
    def __get_pydantic_core_schema__(cls, _source: Any, _handler: GetCoreSchemaHandler) -> CoreSchema:
        within = core_schema.str_schema(max_length=MAX_TEXT)
        cut_down = core_schema.no_info_after_validator_function(lambda text: text[:MAX_TEXT], core_schema.str_schema())
        return core_schema.union_schema(
            [within, cut_down],
            mode="left_to_right",
            custom_error_type="string_type",
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, _schema: CoreSchema, _handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"type": "string", "description": f"Any length; kept to its first {MAX_TEXT} characters"}


# What a span attribute carries of a text by default (`attribute_value_limit`); span names are cut shorter.
MAX_TEXT = 4096
Text = Annotated[str, _Text]
# An event's id, bounded as the identities are.
EventId = Annotated[str, Field(min_length=1, max_length=MAX_IDENTITY)]
Count = Annotated[int, Field(ge=0, lt=2**63)]
# How many attempts a step or job was given: an engine gives up within a few retries, and each attempt
# an exhaustion or a timeline counts is a failure (a metric point, a span event) — a count past this is
# no count of attempts, and one of 2**62 held the fold for good.
Attempts = Annotated[int, Field(ge=0, le=10_000)]
Millis = Annotated[float, Field(ge=-_MAX_MS, le=_MAX_MS)]


class DecodeOptions(BaseModel):
    """What a producer's payloads may reveal: inputs can hold personal data."""

    capture_input: bool = False
    max_input_bytes: int = 2048
    redact_keys: frozenset[str] = frozenset({"password", "secret", "token", "authorization", "apiKey"})
    # Error messages and stacks are kept to what a span can carry (`attribute_value_limit`): kept whole,
    # a producer's stack of megabytes stayed in its run's facts, in memory and in the store, to be cut
    # at every export anyway.
    max_text_chars: int = 4096


def cut(text: str, limit: int) -> str:
    """`text` as a span attribute carries it: its first `limit` characters."""
    return text if len(text) <= limit else text[:limit]


# A time out of range, as pydantic's error names the bound it crossed (UTC written with a Z).
_BOUNDS = {
    "greater_than_equal": ("ge", _EARLIEST.isoformat().replace("+00:00", "Z")),
    "less_than": ("lt", _LATEST.isoformat().replace("+00:00", "Z")),
}


def reason(error: ErrorDetails) -> str:
    """What one of pydantic's errors says, in the bridge's words where the check is the bridge's."""
    if error["type"] == "string_pattern_mismatch" and error.get("ctx", {}).get("pattern") == PRINTABLE:
        return CONTROL_CHARACTERS
    if (bound := _BOUNDS.get(error["type"])) is not None and error.get("ctx", {}).get(bound[0]) == bound[1]:
        return _OUT_OF_RANGE
    return error["msg"].removeprefix("Value error, ")


def every_reason(exc: ValidationError, whole: str = "", named: Callable[[str], str] = str) -> str:
    """Every error of a validation, `field: reason; …` (`whole` names an error of the input as a whole;
    `named(field)` how a field is shown)."""
    told = (
        f"{'.'.join([named(str(e['loc'][0])), *map(str, e['loc'][1:])]) if e['loc'] else whole}: {reason(e)}"
        for e in exc.errors(include_url=False)
    )
    return "; ".join(told)


_KINDS: dict[type, str] = {
    type(None): "null",
    bool: "a boolean",
    int: "a number",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "an object",
}


def json_kind(value: Any) -> str:
    """What `value` is, in JSON's words (a producer wrote `null`, not `NoneType`)."""
    return _KINDS.get(type(value)) or type(value).__name__


class DecodeError(ValueError):
    """An event a source cannot use; `field` names where, `reason` says why."""

    def __init__(self, field: str, reason: str, event_id: str | None = None) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason
        # The event's id, when it has a readable one: the producer finds its event by it.
        self.event_id = event_id

    def of(self, raw: Any, key: str) -> "DecodeError":
        """This error, naming the event by its `key` field when that is a string."""
        value = raw.get(key) if isinstance(raw, dict) else None
        self.event_id = value if isinstance(value, str) else None
        return self


def ns(moment: datetime) -> int:
    """Unix nanoseconds of `moment` (naive: UTC).

    Every event's time passes here. Counted from its fields, its offset asked of its tzinfo
    directly: subtracting an aware epoch asks both sides' tzinfo through the datetime, twice as
    slow for pydantic's `TzInfo`, which every time read from an event has."""
    seconds = (moment.toordinal() - _EPOCH_ORDINAL) * 86_400 + moment.hour * 3_600 + moment.minute * 60 + moment.second
    micros = moment.microsecond
    tz = moment.tzinfo
    if tz is not None and (offset := tz.utcoffset(moment)):
        seconds -= offset.days * 86_400 + offset.seconds
        micros -= offset.microseconds
    return seconds * 1_000_000_000 + micros * 1_000


_EPOCH_ORDINAL = datetime(1970, 1, 1).toordinal()


def iso(moment: datetime | None) -> str | None:
    """`moment` in UTC as ISO-8601 text to the millisecond, with a Z."""
    if moment is None:
        return None
    if moment.tzinfo is not UTC:
        moment = utc(moment).astimezone(UTC)
    return moment.isoformat(timespec="milliseconds")[:-6] + "Z"


def attrs(**values: AttributeValue | None) -> dict[str, AttributeValue]:
    return {key: value for key, value in values.items() if value is not None}


def redacted(value: Any, keys: frozenset[str], depth: int = 0) -> Any:
    if depth > JSON_DEPTH:
        return value  # deeper than orjson writes: the summary says so
    if isinstance(value, dict):
        return {k: "[REDACTED]" if k in keys else redacted(v, keys, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v, keys, depth + 1) for v in value]
    return value


_TOO_DEEP = "[not shown: nested too deeply to write out]"


def summary(value: Any, options: DecodeOptions) -> str | None:
    """A payload as people may see it: JSON with secrets redacted, cut to `max_input_bytes`.

    Payloads can hold personal data: with `capture_input` off only their top-level keys are told.
    """
    if value is None:
        return None
    if not options.capture_input:
        return (
            orjson.dumps(sorted(map(str, value))).decode()[: options.max_input_bytes]
            if isinstance(value, dict)
            else None
        )
    try:
        text = orjson.dumps(redacted(value, options.redact_keys), default=str).decode()
    except (orjson.JSONEncodeError, RecursionError):
        # Nested deeper than orjson writes (254 levels) or Python recurses: valid JSON all the same,
        # and no reason to turn away the event that carries it.
        return _TOO_DEEP
    if len(text) > options.max_input_bytes:
        text = text[: options.max_input_bytes] + "…"
    return text
