"""`otel-bridge check`: what a bridge with these settings would meet, asked before it serves.

Each check opens what `serve` opens, the way `serve` opens it — the same store, the SDK's exporters
from the same standard variables, the same stream and WebSocket clients — does one harmless thing
with it and closes it: an empty OTLP export request (a valid request, of which a backend stores
nothing), a look at the stream and the bridge's group, a WebSocket handshake, one request to the
timeline API. Nothing is written: a SQLite state is opened read-only, so a running bridge's can be
asked too. The point is the deploy that fails at once with the reason — a Collector at the wrong
port, a credential refused, TLS spoken to a plain-text port — rather than minutes later in a log.
"""

import difflib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from otel_bridge import keys
from otel_bridge.config import Settings
from otel_bridge.consumer import Unavailable
from otel_bridge.export import otlp
from otel_bridge.export.otlp import Delivery
from otel_bridge.export.otlp_config import FROM_ENVIRONMENT
from otel_bridge.receivers.dead_letter import can_be_written
from otel_bridge.sources.runtime_v2 import NO_CORRELATION_KEY, SIGNAL_FAILED
from otel_bridge.state import mounts
from otel_bridge.state.salvage import damage_noted, damaged_copies, swapping, take_again
from otel_bridge.state.sqlite_store import SqliteStore, file_bytes
from otel_bridge.state.store import (
    DAMAGED_HELP,
    Replicated,
    SharedLeases,
    StoreDamaged,
    StoreOpenError,
    WithRisks,
    damage_met,
)
from otel_bridge.urls import without_secrets

if TYPE_CHECKING:
    import psycopg

# An execution id no engine holds: the timeline API's answer for it (404) proves it answers.
_NO_EXECUTION = "00000000-0000-0000-0000-000000000000"


@dataclass(frozen=True, slots=True)
class Finding:
    what: str
    # None: not asked, as the settings do not use it.
    ok: bool | None
    detail: str


def check(settings: Settings, timeout_seconds: float = 5.0) -> list[Finding]:
    """Every check, in the order `serve` meets them; none raises (what fails is a finding)."""
    checks: list[tuple[str, Callable[[], Finding]]] = [
        ("state", lambda: _state(settings, timeout_seconds)),
        ("names", lambda: _names(settings)),
        ("dead letters", lambda: _dead_letters(settings)),
        ("traces", lambda: _export("traces", timeout_seconds)),
        ("metrics", lambda: _export("metrics", timeout_seconds)),
        ("stream", lambda: _stream(settings, timeout_seconds)),
        ("websocket", lambda: _websocket(settings, timeout_seconds)),
        ("timeline API", lambda: _timeline_api(settings, timeout_seconds)),
        ("runtime v2", lambda: _runtime_v2(settings, timeout_seconds)),
        ("access", lambda: _access(settings)),
        ("tls", lambda: _tls(settings)),
    ]
    findings = []
    for what, asked in checks:
        try:
            findings.append(asked())
        except Exception as exc:  # a check's own failure is told as its finding, not a traceback
            findings.append(Finding(what, False, f"{type(exc).__name__}: {exc}"))
    return findings


def _tls(settings: Settings) -> Finding:
    """Whether the certificate `serve` would serve HTTPS with loads, with its key, and how long it lasts."""
    from otel_bridge.certificates import SOON_SECONDS, TlsFilesError, expiration, refused_by_clients, when_it_ends
    from otel_bridge.receivers.served_tls import server_context

    certfile, keyfile = settings.tls_certfile, settings.tls_keyfile
    if certfile is None:
        return Finding("tls", None, "plain HTTP (tls_certfile)")
    try:
        server_context(certfile, keyfile, settings.tls_keyfile_password)
        ends = expiration(certfile)
    except TlsFilesError as exc:
        return Finding("tls", False, str(exc))
    when, days = when_it_ends(ends, time.time())
    if days <= 0:
        return Finding("tls", False, f"{certfile} ended {when}: clients refuse it")
    if refused := refused_by_clients(certfile):
        return Finding("tls", False, "; ".join(refused))
    soon = " (BridgeCertificateExpiring warns from two weeks before)" if days * 86400 < SOON_SECONDS else ""
    renewed = f"a renewed one is taken within {settings.tls_reload_seconds:g} s"
    return Finding("tls", True, f"{certfile} serves HTTPS until {when}, in {days:.1f} days{soon}; {renewed}")


def _access(settings: Settings) -> Finding:
    """Which credentials the endpoint asks for, by setting (never a secret): a deploy whose Secret did not
    reach the bridge serves everyone, and only this says so before producers find out."""
    said = []
    if settings.api_key is not None:
        retiring = f" (and {len(settings.retiring_api_keys)} retiring)" if settings.retiring_api_keys else ""
        said.append(f"api_key in {settings.api_key_header}{retiring}")
    if settings.bearer_token is not None:
        retiring = f" (and {len(settings.retiring_bearer_tokens)} retiring)" if settings.retiring_bearer_tokens else ""
        said.append(f"bearer_token{retiring}")
    if producers := sorted({service for service, _key in settings.producer_api_keys}):
        said.append(f"producer keys of {', '.join(producers)}")
    if not said:
        return Finding("access", None, "open: no credential is asked (api_key, bearer_token, producer_api_keys)")
    metrics = "/metrics behind the bridge's own credential" if settings.metrics_auth else "/metrics open"
    return Finding("access", True, f"{'; '.join(said)}; {metrics}")


def _state(settings: Settings, timeout_seconds: float = 5.0) -> Finding:
    from otel_bridge.runtime import note_damage_met, open_store, state_named
    from otel_bridge.state.redis_store import RedisStore

    state = settings.state
    if settings.in_memory:  # nothing to reach or to make: it was ":memory: does not exist yet"
        return Finding("state", True, "in memory (:memory:): kept for this process only, nothing across a restart")
    if not settings.shared_state:
        name = f"{state} (SQLite)"
        if not Path(state).exists():
            if not can_be_written(Path(state)):  # `serve` makes the folders it needs
                return Finding("state", False, f"{name} cannot be made: no writable folder to make it in")
            said = f"{name} does not exist yet: made at the first start"
            risk = mounts.network_risk(state)
            return Finding("state", True, f"{said}; {risk}" if risk else said)
    try:
        store = open_store(settings, read_only=True)
    except StoreDamaged as exc:
        note_damage_met(settings, exc.met)
        return Finding("state", False, str(exc))
    except (StoreOpenError, Unavailable, OSError) as exc:
        return Finding("state", False, str(exc))
    if settings.shared_state:
        name = state_named(state, store)
        if isinstance(store, RedisStore) and (primary := store.primary()) is not None:
            name += f" (the Sentinels' primary now {primary})"
    try:
        unread = ""
        if isinstance(store, SqliteStore):
            try:
                if (damage := store.damage_found(within_seconds=timeout_seconds)) is not None:
                    note_damage_met(settings, damage_met(damage, state))
                    return Finding("state", False, f"{name} is damaged ({damage}): {DAMAGED_HELP}")
            except TimeoutError:  # a deploy gated on `check` does not wait minutes for a file of many GiB
                size = file_bytes(state) / 2**30
                unread = (
                    f"; not every page checked for damage within {timeout_seconds:g} s ({size:.1f} GiB): "
                    "a longer --timeout reads them all"
                )
            if settings.salvage_at_start and (noted := damage_noted(Path(state))) is not None:
                # What a bridge met running: the next start checks every page and salvages it if need be.
                unread += f"; noted ({noted}): the next start salvages it first, ~20 s a GiB"
            if swapping(Path(state)).exists():
                # Killed as the fresh file was to take the name: this may be the damaged file, without its log.
                unread += "; a salvage was cut short as its fresh file took the name: the next start finishes it"
            if take_again(Path(state)).exists():
                # Left by a salvage: the start after it takes them, and one that could not left it (its log said why).
                unread += (
                    "; the events the damage rejected wait in the dead-letter file for the next start to take again"
                )
            if kept := damaged_copies(Path(state)):
                # Each as large as the state was: on a disk that fails again and again they fill it.
                size = sum(file_bytes(copy) for copy in kept) / 2**20
                unread += (
                    f"; {len(kept)} damaged cop{'ies' if len(kept) > 1 else 'y'} kept beside it by a salvage "
                    f"({size:,.0f} MiB, the latest {kept[-1].name}): delete once the bridge runs well"
                )
        detail = f"{name}: {store.outbox_depth():,} spans wait for export{unread}"
        refused = store.refuses_batches()
        if refused:
            return Finding("state", False, f"{detail}; batches are refused: {refused}")
        if isinstance(store, Replicated):
            connected, short = store.replicas()
            if short is not None:
                return Finding("state", False, f"{detail}; {short}")
            if settings.wait_replicas:
                detail += f"; {connected} replicas connected, batches wait for {settings.wait_replicas}"
        risks = store.risks() if isinstance(store, WithRisks) else []
        leases = _leases(store, settings) if isinstance(store, SharedLeases) else []
        return Finding("state", True, "; ".join([detail, *leases, *risks]))
    finally:
        store.close()


def _leases(store: SharedLeases, settings: Settings) -> list[str]:
    """Which of the bridges sharing the store does each task done alone, by its lease: the replica whose log to
    read, whose /readyz tells of the engine it follows. Held by none: none runs (one killed is named until its
    lease lapses, then another takes it)."""
    tasks = [(keys.COUNTS_LEASE, "the store's counts (open runs, overdue, outbox depth) told")]
    if settings.ws_url:
        url = without_secrets(settings.ws_url)
        tasks.append((keys.websocket_lease(url), f"the WebSocket {url} followed"))
    if settings.runtime_v2_url:
        tasks.append((keys.RUNTIME_V2_LEASE, "the runtime v2's tables read"))
    said = []
    for lease, done in tasks:
        held = store.lease_held(lease)
        said.append(f"{done} by {held[0]} (its lease: {held[1]:.0f} s left)" if held else f"{done} by no bridge now")
    return said


def _names(settings: Settings) -> Finding:
    """The workflows, jobs and producers the settings name, against those the store holds: a name misspelt in
    `silent_executing`, `silent_continuous`, `overdue_tasks` or `cleared_debounces` turns its alert off (or on)
    and says nothing; one in `expected_producers` raises ProducerNotHeard for a producer that does not exist.
    A name the store holds nothing of is told, not failed: a monthly job may not have run yet."""
    from otel_bridge.runtime import open_store
    from otel_bridge.state import hearings, journal

    named = {
        "silent_executing": sorted(settings.silent_executing),
        "silent_continuous": sorted(settings.silent_continuous),
        "overdue_tasks": settings.overdue_tasks,
        "cleared_debounces": settings.cleared_debounces,
        "expected_producers": sorted(settings.expected_producers),
    }
    named = {setting: [name for name in names if name != "*"] for setting, names in named.items()}
    if not any(named.values()):
        settings_ = "silent_executing, silent_continuous, overdue_tasks, cleared_debounces, expected_producers"
        return Finding("names", None, f"no workflow, job or producer named ({settings_})")
    if settings.in_memory or (not settings.shared_state and not Path(settings.state).exists()):
        return Finding("names", None, "nothing stored yet to find the names in")
    try:
        store = open_store(settings, read_only=True)
    except (StoreOpenError, Unavailable, OSError) as exc:
        return Finding("names", None, f"not asked: {exc}")
    try:
        stored = journal.names(store)
        # A producer whose runs all ended and were forgotten (`keep_finished_seconds`) is known by its hearing.
        kept = hearings.decoded(store.bookmark(hearings.BOOKMARK))
    except Exception as exc:
        if not store.damaged(exc):
            raise
        return Finding("names", None, "not asked: the state file is damaged (the state's finding says how)")
    finally:
        store.close()
    said = [f"{len(stored.workflows):,} workflows and {len(stored.jobs):,} jobs stored"]
    heard = {f"{service}@{env}" for _engine, env, service in kept.heard}
    holds = {
        "silent_executing": (stored.workflows, "run"),
        "expected_producers": (stored.producers | heard, "run or job instance nor an event heard"),
    }
    for setting, names in named.items():
        known, of = holds.get(setting, (stored.jobs, "job instance"))
        for name in names:
            if name not in known:
                if setting == "expected_producers":
                    alike = _alike_producer(name, sorted(known))
                else:
                    alike = difflib.get_close_matches(name, sorted(known), n=1)
                hint = f" (did you mean {alike[0]}?)" if alike else ""
                since = kept.expected_since.get(name) if setting == "expected_producers" else None
                expected = (
                    ""
                    if since is None
                    else f" (expected since {datetime.fromtimestamp(since, UTC):%Y-%m-%d %H:%M} UTC)"
                )
                said.append(f"{setting} names {name}, of which the store holds no {of}{expected}{hint}")
    return Finding("names", True, "; ".join(said))


def _alike_producer(name: str, known: list[str]) -> list[str]:
    """The producer (`serviceKey@env`) likely meant: of a service alike, the one alike as a whole. Alike as a
    whole alone, every producer of one environment was like every other (`ghost@production`, `shop@production`)."""
    service = name.rpartition("@")[0]
    services = difflib.get_close_matches(service, {k.rpartition("@")[0] for k in known}, n=1)
    return difflib.get_close_matches(name, [k for k in known if k.rpartition("@")[0] in services], n=1, cutoff=0)


def _dead_letters(settings: Settings) -> Finding:
    """Where rejected events and refused spans are kept: `serve` refuses to start where it cannot write them."""
    places = {"dead_letter": Path(settings.dead_letter), "span_dead_letter": Path(settings.span_dead_letter)}
    unwritable = [f"{setting} {path} cannot be written" for setting, path in places.items() if not can_be_written(path)]
    if unwritable:
        return Finding("dead letters", False, "; ".join(unwritable))
    return Finding("dead letters", True, f"{places['dead_letter']}, {places['span_dead_letter']}: writable")


def _export(signal: str, timeout_seconds: float) -> Finding:
    probed = otlp.probe(signal, timeout_seconds)
    if probed is None:
        variable = f"OTEL_{signal.upper()}_EXPORTER"
        return Finding(signal, None, f"not exported over OTLP ({variable}={os.environ.get(variable, '')})")
    endpoint, result = probed
    if result.delivery is Delivery.SENT:
        return Finding(signal, True, f"{endpoint} took an empty export request{_client_certificate_ends(signal)}")
    reason = result.reason or "no answer"
    if result.throttled:
        # There, and the settings reach it: what it sends waits in the outbox until the backend takes
        # it. Its credential is not known good until it has taken a request.
        return Finding(
            signal, True, f"{endpoint} throttles the bridge now: {reason}; the spans wait until it takes them"
        )
    return Finding(signal, False, f"{endpoint}: {reason}{_tls_hint(signal, reason)}")


def _client_certificate_ends(signal: str) -> str:
    """When the client certificate `signal`'s export presents ends, said after a backend took it ("" without one)."""
    from otel_bridge.certificates import TlsFilesError, expiration, when_it_ends

    path = FROM_ENVIRONMENT.variable(signal, "CLIENT_CERTIFICATE")[1]
    if not path:
        return ""
    try:
        when, days = when_it_ends(expiration(Path(path)), time.time())
    except TlsFilesError as exc:
        return f"; {exc}"
    return f"; its client certificate ({path}) ends {when}, in {days:.1f} days"


def _tls_hint(signal: str, reason: str) -> str:
    """What to give when an export failed at the TLS handshake, which each client words its own way: an
    untrusted backend certificate, or a backend asking for the bridge's own (mutual TLS) that closes
    the connection without it (gRPC says only "Socket closed")."""
    told = reason.lower()

    def given(name: str) -> bool:  # the variable, or its signal's own
        return any(os.environ.get(f"OTEL_EXPORTER_OTLP_{p}{name}") for p in ("", f"{signal.upper()}_"))

    if "certificate verify failed" in told or "certificate_verify_failed" in told:
        return "; the backend's certificate is not trusted here: give its CA in OTEL_EXPORTER_OTLP_CERTIFICATE"
    handshake = "ssl" in told or "tls" in told or ("socket closed" in told and given("CERTIFICATE"))
    if handshake and not given("CLIENT_CERTIFICATE"):
        return (
            "; a backend that asks for the bridge's own certificate (mutual TLS) ends the handshake without it:"
            " give OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY"
        )
    return ""


def _stream(settings: Settings, timeout_seconds: float) -> Finding:
    if not settings.stream_url:
        return Finding("stream", None, "not followed (--stream-url)")
    from otel_bridge.redis_client import REDIS_ERRORS, connect, tls_hint

    where = f"{settings.stream_key} at {without_secrets(settings.stream_url)}"
    try:
        client = connect(settings.stream_url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds)
    except REDIS_ERRORS as exc:
        return Finding("stream", False, f"{where}: {exc}{tls_hint(exc, settings.stream_url)}")
    try:
        client.ping()
        if not client.exists(settings.stream_key):
            return Finding(
                "stream", True, f"{where}: reachable; no stream yet (the bridge makes it, with its group, at start)"
            )
        length = client.xlen(settings.stream_key)
        group = next(
            (g for g in client.xinfo_groups(settings.stream_key) if _text(g.get("name")) == settings.stream_group),
            None,
        )
        if group is None:
            told = f"{length:,} entries; group {settings.stream_group} not made yet (the bridge makes it at start)"
        else:
            lag = group.get("lag")
            told = (
                f"{length:,} entries; group {settings.stream_group}: {group.get('pending', 0):,} read and not "
                f"acknowledged, {'?' if lag is None else f'{lag:,}'} not read yet"
            )
        return Finding("stream", True, f"{where}: {told}")
    except REDIS_ERRORS as exc:  # the connection is made at the first command: a TLS handshake fails here
        return Finding("stream", False, f"{where}: {exc}{tls_hint(exc, settings.stream_url)}")
    finally:
        client.close()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _websocket(settings: Settings, timeout_seconds: float) -> Finding:
    if not settings.ws_url:
        return Finding("websocket", None, "not followed (--ws-url)")
    from websockets.exceptions import InvalidHandshake, InvalidURI
    from websockets.sync.client import connect

    headers = {"X-Workspace-Id": settings.ws_workspace_id} if settings.ws_workspace_id else {}
    try:
        with connect(settings.ws_url, additional_headers=headers, open_timeout=timeout_seconds):
            pass
    except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
        return Finding("websocket", False, f"{without_secrets(settings.ws_url)}: {exc or type(exc).__name__}")
    return Finding("websocket", True, f"{without_secrets(settings.ws_url)}: handshake done")


def _runtime_v2(settings: Settings, timeout_seconds: float) -> Finding:
    if not settings.runtime_v2_url:
        return Finding("runtime v2", None, "not followed (--runtime-v2-url)")
    import psycopg

    from otel_bridge.receivers.postgres_poll import (
        EVENTS_KEPT,
        LAUNCH_SKIPS,
        LAUNCH_SKIPS_KEPT,
        SCHEDULES_KEPT,
        said,
    )
    from otel_bridge.receivers.postgres_poll import TABLES as RUNTIME_V2_TABLES
    from otel_bridge.terminal import duration

    where = without_secrets(settings.runtime_v2_url)
    try:
        with psycopg.connect(settings.runtime_v2_url, connect_timeout=max(int(timeout_seconds), 1)) as db:
            present = {
                row[0]
                for row in db.execute(
                    "SELECT c.relname FROM pg_class c WHERE c.relname = ANY(%s) AND pg_table_is_visible(c.oid)",
                    (list(RUNTIME_V2_TABLES),),
                )
            }
            missing = [t for t in RUNTIME_V2_TABLES if t not in present]
            if missing:
                return Finding("runtime v2", False, f"{where}: no table {', '.join(missing)} here (its search_path)")
            denied = [t for t in RUNTIME_V2_TABLES if not _one(db, "SELECT has_table_privilege(%s, 'SELECT')", t)]
            if denied:
                grant = f"GRANT SELECT ON {', '.join(denied)} TO {_one(db, 'SELECT current_user')}"
                return Finding("runtime v2", False, f"{where}: may not read {', '.join(denied)} ({grant})")
            running = _one(db, "SELECT count(*) FROM workflow_runs WHERE status IN ('RUNNING', 'WAITING')")
            stranded = _one(db, _NOT_BEGUN)
            events_kept = _one(db, EVENTS_KEPT)
            optional = _optional(
                db,
                "tenant_workflow_schedule",
                _one(db, SCHEDULES_KEPT),
                _SCHEDULES_LATE,
                "; {:,} schedules awaiting their next occurrence",
                ", {:,} past it by over a minute (their job runner lost them?)",
            )
            # With the workflows not launched for each event where the runtime writes them, as the bridge reads them.
            skips_kept = _one(db, LAUNCH_SKIPS_KEPT) if events_kept else None
            why = "their error_message says why"
            if skips_kept:
                # Which workflows' launches failed how, in the runtime's words: what to mend first.
                by_reason = db.execute(_of_the_skips(_SKIPPED_BY_REASON))
                reasons = ", ".join(f"{reason} {count:,}" for reason, count in by_reason)
                why = "their error_message and workflow_event_launch_skips say why" + (
                    f": {reasons}" if reasons else ""
                )
            taken = _optional(
                db,
                "workflow_runtime_events",
                events_kept,
                _of_the_skips(_EVENTS_TAKEN_SKIPPED) if skips_kept else _EVENTS_TAKEN,
                "; {:,} events taken in within the hour",
                ", {:,} not delivered (" + why.replace("{", "{{").replace("}", "}}") + ")",
            )
            if events_kept and not taken and (silent := _one(db, _EVENTS_SILENT)) is not None:
                # None within the hour: since when (its event worker down, its stream out of reach?).
                taken = f"; no event taken in within the hour, the latest {duration(silent)} ago"
            if skips_kept is False:
                taken += _may_not_read(db, LAUNCH_SKIPS)
            elif skips_kept and taken:
                taken += _on_purpose(db)
            optional += taken
            # The runtime indexes no `updated_at`: without one, every read scans the runs (README: Cost).
            indexed = _one(db, _INDEXED, "workflow_runs", "updated_at")
            # The runtime's later migrations index the events' `created_at`; its first did not.
            events_indexed = not events_kept or _one(db, _INDEXED, "workflow_runtime_events", "created_at")
    except psycopg.Error as exc:
        return Finding("runtime v2", False, f"{where}: {said(exc)}")
    scan = "" if indexed else "; no index on workflow_runs (updated_at): each read scans the runs (README: Cost)"
    if not events_indexed:
        scan += (
            "; no index on workflow_runtime_events (created_at): each read scans the events (CREATE INDEX "
            "CONCURRENTLY ON workflow_runtime_events (created_at))"
        )
    # The failure the runtime's own run page warns of: no worker consumes its task queue (the bridge shows
    # them queued, overdue once the grace has passed; the runtime is not the bridge's to mend).
    begun = f", {stranded:,} launched over a minute ago that no worker has begun" if stranded else ""
    return Finding("runtime v2", True, f"{where}: readable; {running:,} runs running or waiting{begun}{optional}{scan}")


def _on_purpose(db: "psycopg.Connection[Any]") -> str:
    """The workflows the runtime did not launch on purpose for the hour's events (a workflow paused, a trigger
    loop guarded), with how many events each: a failure of none, counted nowhere else, and a workflow paused
    and forgotten misses every event meanwhile."""
    skipped = db.execute(_of_the_skips(_SKIPPED_ON_PURPOSE)).fetchall()
    if not skipped:
        return ""
    named = [f"{name} ({reason}) for {count:,} event{'s' if count > 1 else ''}" for name, reason, count in skipped]
    more = f" and {len(named) - _NAMED_AT_MOST:,} more" if len(named) > _NAMED_AT_MOST else ""
    return f"; not launched on purpose: {', '.join(named[:_NAMED_AT_MOST])}{more}"


def _of_the_skips(query: str) -> str:
    """`query` reading the workflows not launched for an event `e` (`{skips}`, joined `s` `{of_the_event}`)."""
    from otel_bridge.receivers.postgres_poll import LAUNCH_SKIPS, OF_THE_EVENT

    return query.format(skips=LAUNCH_SKIPS, of_the_event=OF_THE_EVENT)


def _optional(db: "psycopg.Connection[Any]", table: str, readable: bool | None, counted: str, *said: str) -> str:
    """What `check` says of a table only some editions or versions of the runtime have (nothing where it is
    missing): the two counts `counted` reads, each in its words `said` (the second left out when 0), nothing
    when the first is 0."""
    if readable is None:
        return ""
    if not readable:
        return _may_not_read(db, table)
    every, some = db.execute(counted).fetchone() or (0, 0)
    if not every:
        return ""
    return said[0].format(every) + (said[1].format(some) if some else "")


def _may_not_read(db: "psycopg.Connection[Any]", table: str) -> str:
    return f"; may not read {table} (GRANT SELECT ON {table} TO {_one(db, 'SELECT current_user')})"


# The events of the last hour, by the runtime's index on created_at, and those not delivered (as the bridge
# counts them: sources/runtime_v2.py); read through the row's JSON, which older schemas write without it.
_EVENTS_TAKEN = f"""
SELECT count(*), count(*) FILTER (
  WHERE to_jsonb(e)->>'error_message' <> '' AND to_jsonb(e)->>'error_message' NOT LIKE '{NO_CORRELATION_KEY}%')
FROM workflow_runtime_events e WHERE e.created_at > now() - interval '1 hour'
"""


_ERROR = "to_jsonb(e)->>'error_message'"
# Where the runtime writes the workflows it did not launch for an event: not delivered, one it did not mean to
# skip, or a wait it could not resume; with none written (the event taken before their table), its error alone.
_EVENTS_TAKEN_SKIPPED = f"""
SELECT count(*), count(*) FILTER (WHERE CASE
  WHEN EXISTS (SELECT 1 FROM {{skips}} s WHERE {{of_the_event}})
    THEN EXISTS (SELECT 1 FROM {{skips}} s WHERE {{of_the_event}} AND NOT s.intentional)
      OR {_ERROR} ~ '(^|\n){SIGNAL_FAILED}'
  ELSE {_ERROR} <> '' AND {_ERROR} NOT LIKE '{NO_CORRELATION_KEY}%' END)
FROM workflow_runtime_events e WHERE e.created_at > now() - interval '1 hour'
"""


# The hour's events not delivered by the reason of each workflow not launched for them (an event counted once
# a reason), by the index on the events' created_at and the skips' key.
_SKIPPED_BY_REASON = """
SELECT s.reason, count(DISTINCT e.event_id) FROM workflow_runtime_events e JOIN {skips} s ON {of_the_event}
WHERE e.created_at > now() - interval '1 hour' AND NOT s.intentional
GROUP BY s.reason ORDER BY 2 DESC, 1
"""

# The hour's workflows not launched on purpose for an event, by workflow and reason, with how many events each.
_SKIPPED_ON_PURPOSE = """
SELECT coalesce(d.name, s.workflow_id::text), s.reason, count(DISTINCT e.event_id)
FROM workflow_runtime_events e JOIN {skips} s ON {of_the_event}
LEFT JOIN workflow_definitions d ON d.workflow_id = s.workflow_id
WHERE e.created_at > now() - interval '1 hour' AND s.intentional
GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2
"""
# Of them, those named (the rest counted).
_NAMED_AT_MOST = 5


# How long ago the latest event was taken in, in seconds (null: none ever), by the index on created_at.
_EVENTS_SILENT = "SELECT extract(epoch FROM now() - max(created_at))::float8 FROM workflow_runtime_events"


# Runs RUNNING a minute after they were launched with no step yet, by the index on status and the steps' on run_id.
_NOT_BEGUN = """
SELECT count(*) FROM workflow_runs r
WHERE r.status = 'RUNNING' AND r.started_at < now() - interval '1 minute'
  AND NOT EXISTS (SELECT 1 FROM workflow_run_steps s WHERE s.run_id = r.run_id)
"""


# The schedules enabled, and of them those whose next occurrence should have been written a minute ago.
_SCHEDULES_LATE = """
SELECT count(*), count(*) FILTER (WHERE next_fire_at < now() - interval '1 minute')
FROM tenant_workflow_schedule WHERE enabled AND status = 'scheduled'
"""


# Whether an index of a table begins with a column (what the poller's reads go by).
_INDEXED = """
SELECT EXISTS (
  SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
  WHERE i.indrelid = %s::regclass AND a.attname = %s)
"""


def _one(db: "psycopg.Connection[Any]", query: str, *params: Any) -> Any:
    row = db.execute(query, params or None).fetchone()
    return row[0] if row else None


def _timeline_api(settings: Settings, timeout_seconds: float) -> Finding:
    if not settings.ws_api_url:
        lost = ": what a disconnection makes the bridge miss of a run is lost" if settings.ws_url else ""
        return Finding("timeline API", None, f"not asked (--ws-api-url){lost}")
    import httpx

    from otel_bridge.receivers.timeline_api import ApiError, timeline

    api = without_secrets(settings.ws_api_url)
    headers = {"X-Workspace-Id": settings.ws_workspace_id} if settings.ws_workspace_id else {}
    try:
        with httpx.Client(timeout=timeout_seconds, headers=headers) as client:
            timeline(client, settings.ws_api_url, _NO_EXECUTION)
    except ApiError as exc:
        if exc.status != 404:  # 404: no such execution, the answer expected
            return Finding("timeline API", False, str(exc))
    except httpx.HTTPError as exc:
        return Finding("timeline API", False, f"{api}: {exc or type(exc).__name__}")
    return Finding("timeline API", True, f"{api}: answers")
