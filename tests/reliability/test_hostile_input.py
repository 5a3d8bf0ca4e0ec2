"""A corpus of bad bodies and events: each gets its documented answer, never a 500, never a crash."""

import contextlib
import gzip
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from bridge_process import BridgeProcess
from builders import JobRun, WorkflowRun
from otlp_receiver import OtlpHttpReceiver

from otel_bridge import trace_id_for

BODY_LIMIT = 10 * 1024 * 1024  # the default
ATTRIBUTE_LIMIT = 256
DEAD_LETTER_BUDGET = 20_000


@pytest.fixture(scope="module")
def bridge(tmp_path_factory) -> Iterator[tuple[BridgeProcess, OtlpHttpReceiver]]:
    receiver = OtlpHttpReceiver()
    process = BridgeProcess(
        tmp_path_factory.mktemp("hostile"),
        receiver.endpoint,
        body_timeout_seconds="2",
        header_timeout_seconds="2",
        attribute_value_limit=str(ATTRIBUTE_LIMIT),
        max_dead_letter_bytes_per_batch=str(DEAD_LETTER_BUDGET),
    ).start()
    yield process, receiver
    assert process.proc is not None and process.proc.poll() is None, "the bridge died during the corpus"
    process.close()
    receiver.close()


def _raw(bridge: BridgeProcess, body: bytes, **headers: str) -> httpx.Response:
    return bridge.client.post(
        f"{bridge.url}/v1/events", content=body, headers={"content-type": "application/json"} | headers
    )


BAD_BODIES = [
    (b"\xff\xfe{not utf-8}", 400, "not valid JSON"),
    (b'{"events": ["\xed\xa0\x80"]}', 400, "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "not valid JSON"),
    (b"", 400, "empty body"),
    (b"null", 400, "JSON object"),
    (b'{"events": null}', 400, "must be an array"),
    (b'{"events": "[]"}', 400, "must be an array"),
    (b'"events"', 400, "JSON object"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD_BODIES)
def test_bodies_that_are_not_batches(bridge, body, status, message):
    process, _ = bridge
    response = _raw(process, body)
    assert (response.status_code, message in response.json()["error"]) == (status, True)


def test_each_bad_event_is_listed_with_index_and_field_and_the_good_ones_processed(bridge):
    process, receiver = bridge
    run = WorkflowRun("mixed").started().step_started("a").after(3).step_completed("a").completed()
    bad = [
        {**run.events[1], "eventId": "b1", "attempt": "one"},
        {**run.events[1], "eventId": "b2", "type": "step.teleported"},
        {k: v for k, v in run.events[1].items() if k != "workflowName"} | {"eventId": "b3"},
        {**run.events[1], "eventId": "b4", "timestamp": 12},
        {"eventId": "b5"},
        42,
        None,
        [run.events[0]],
    ]
    response = process.post([run.events[0], *bad, *run.events[1:]])
    assert response.status_code == 200
    body = response.json()
    assert body["accepted"] == 4
    rejected = {r["index"]: (r["eventId"], r["field"]) for r in body["rejected"]}
    assert rejected == {
        1: ("b1", "attempt"),
        2: ("b2", "type"),
        3: ("b3", "workflowName"),
        4: ("b4", "timestamp"),
        5: ("b5", "source"),
        6: (None, ""),
        7: (None, ""),
        8: (None, ""),
    }
    dead = (process.workdir / "dead-letter.jsonl").read_text().splitlines()
    assert {json.loads(line)["eventId"] for line in dead} >= {"b1", "b2", "b3", "b4", "b5"}
    trace_id = run.events[0]["workflowId"]
    receiver.received.wait_for(
        lambda: any(s.attributes.get("workflow.execution.id") == trace_id for s in receiver.received.spans)
    )


def test_huge_strings_and_deep_inputs_are_accepted_but_truncated_on_spans(bridge):
    process, receiver = bridge
    deep: object = "bottom"
    for _ in range(500):
        deep = {"d": deep}
    run = WorkflowRun("x" * 100_000).started(input=deep).step_started("s" * 1_000_000).after(1)
    run.step_completed("s" * 1_000_000).completed()
    assert process.post(run.events).json()["accepted"] == 4
    got = receiver.received
    got.wait_for(lambda: any(s.attributes.get("workflow.execution.id") == run.workflow_id for s in got.spans))
    for span in (s for s in got.spans if s.attributes.get("workflow.execution.id") == run.workflow_id):
        assert len(span.name) <= ATTRIBUTE_LIMIT
        assert all(len(v) <= ATTRIBUTE_LIMIT for v in span.attributes.values() if isinstance(v, str))


def test_ten_thousand_events_in_one_batch(bridge):
    process, _ = bridge
    events = []
    for i in range(2000):
        run = WorkflowRun("bulk", workflow_id=f"bulk-{i}").started().step_started("a").after(1)
        events += [*run.step_completed("a").completed().events, run.events[0] | {"eventId": f"dup-{i}"}]
    assert len(events) == 10_000
    body = process.post(events, timeout=60).json()
    assert body["accepted"] + body["duplicates"] == 10_000 and body["rejected"] == []


def test_a_50_mib_body_is_refused_by_its_length(bridge):
    process, _ = bridge
    response = _raw(process, b" " * (50 * 1024 * 1024))
    assert response.status_code == 413


def test_a_streamed_body_without_length_is_cut_at_the_limit(bridge):
    process, _ = bridge

    def chunks() -> Iterator[bytes]:
        for _ in range(60):
            yield b" " * (1024 * 1024)

    response = process.client.post(
        f"{process.url}/v1/events", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413


def test_a_gzip_bomb_is_refused_without_inflating_it(bridge):
    process, _ = bridge
    bomb = gzip.compress(b" " * (200 * 1024 * 1024), compresslevel=9)
    response = _raw(process, bomb, **{"content-encoding": "gzip"})
    assert response.status_code == 413


def test_a_slow_loris_gets_408_while_others_are_served(bridge):
    process, _ = bridge
    sock = socket.create_connection(("127.0.0.1", process.port))
    try:
        sock.sendall(
            b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
        )
        served = process.post(WorkflowRun().started().events)  # not blocked by the slow client
        assert served.status_code == 200
        sock.settimeout(10)
        for _ in range(3):
            time.sleep(0.5)
            try:
                sock.sendall(b" ")
            except OSError:
                break
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408")
    finally:
        sock.close()


def _rejections(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 200, response.text
    return {r["eventId"]: f"{r['field']}: {r['error']}" for r in response.json()["rejected"]}


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"timestamp": "1969-12-31T23:59:59.999Z"}, "timestamp", "between 1970-01-01 and 2554-07-21"),
        ({"timestamp": "2600-01-01T00:00:00.000Z"}, "timestamp", "between 1970-01-01 and 2554-07-21"),
        # Overflows on conversion to UTC: once a 503 for the whole batch.
        ({"timestamp": "9999-12-31T23:59:59-05:00"}, "timestamp", "between 1970-01-01 and 2554-07-21"),
        ({"attempt": 2**63}, "attempt", "less than"),
        ({"type": "step.completed", "durationMs": 1e300}, "durationMs", "less than or equal"),
        ({"env": "a\x1fb"}, "env", "control characters"),
        ({"serviceKey": "b\x1fc"}, "serviceKey", "control characters"),
        ({"workflowId": "w\x00"}, "workflowId", "control characters"),
        # An identity is in the key of every row its run keeps: one the size of a payload is a mistake.
        ({"workflowId": "w" * 1001}, "workflowId", "at most 1000 characters"),
        ({"eventId": "e" * 1001}, "eventId", "at most 1000 characters"),
        ({"env": "p" * 1001}, "env", "at most 1000 characters"),
    ],
    ids=[
        "before-1970",
        "after-2554",
        "overflowing-utc",
        "attempt-2^63",
        "duration-overflow",
        "env-us",
        "key-us",
        "id-nul",
        "id-too-long",
        "event-id-too-long",
        "env-too-long",
    ],
)
def test_values_out_of_bounds_are_rejected_per_event_and_the_rest_delivered(bridge, change, field, reason):
    process, receiver = bridge
    good = WorkflowRun("beside-bad").started().step_started("a").after(1).step_completed("a").completed()
    bad = {**good.events[1], "eventId": "poisoned", "durationMs": 5} | change
    rejected = _rejections(process.post([*good.events[:2], bad, *good.events[2:]]))
    (why,) = rejected.values()
    assert rejected.keys() == {bad["eventId"]}
    assert why.startswith(f"{field}:") and reason in why
    trace_id = trace_id_for("durable-effect", "production", "shop", good.workflow_id).hex()
    receiver.received.wait_for(lambda: len(receiver.received.trace(trace_id)) == 2)


def test_a_lone_surrogate_from_javascript_is_accepted_as_a_replacement_character(bridge):
    process, receiver = bridge
    run = WorkflowRun("sliced-emoji").started().step_started("send").after(1).step_completed("send").completed()
    body = json.dumps({"events": run.events}).replace('"send"', '"send \\ud83d"').encode()
    response = _raw(process, body)
    assert response.status_code == 200 and response.json()["accepted"] == 4, response.text
    trace_id = trace_id_for("durable-effect", "production", "shop", run.workflow_id).hex()
    receiver.received.wait_for(lambda: len(receiver.received.trace(trace_id)) == 2)
    assert "step send \ufffd" in {s.name for s in receiver.received.trace(trace_id)}


def test_identities_holding_the_field_separator_are_rejected_so_no_two_producers_share_a_trace(bridge):
    process, _ = bridge
    first = WorkflowRun("joined", env="a", service="b\x1fc", workflow_id="same").started()
    second = WorkflowRun("joined", env="a\x1fb", service="c", workflow_id="same").started()
    rejected = _rejections(process.post(first.events + second.events))
    assert len(rejected) == 2 and all("control characters" in r for r in rejected.values())


def test_a_batch_over_the_event_limit_gets_413(bridge):
    process, _ = bridge
    response = _raw(process, b'{"events": [' + b",".join([b"{}"] * 10_001) + b"]}")
    assert response.status_code == 413
    assert "max_batch_events" in response.json()["error"]


def test_millions_of_tiny_invalid_events_are_refused_without_amplification(bridge):
    process, _ = bridge
    body = b'{"events": [' + b",".join([b"0"] * 4_900_000) + b"]}"
    assert len(body) < BODY_LIMIT
    response = _raw(process, body)
    assert response.status_code == 413 and len(response.content) < 1000


def test_rejections_are_listed_up_to_a_limit_and_dead_lettered_within_a_budget(bridge, tmp_path_factory):
    process, _ = bridge
    dead_letter = process.workdir / "dead-letter.jsonl"
    before = dead_letter.stat().st_size if dead_letter.exists() else 0
    junk = [{"eventId": f"junk-{i}", "padding": "x" * 500} for i in range(2_000)]
    body = process.post(junk).json()
    assert len(body["rejected"]) == 100 and body["rejectedCount"] == 2_000
    written = dead_letter.read_text()[before:]
    assert len(written) < DEAD_LETTER_BUDGET + 2_000
    assert '"omitted":' in written.splitlines()[-1]


def test_huge_names_are_cut_on_metric_labels_and_span_names(bridge):
    process, receiver = bridge
    job = JobRun("j" * 1_000_000, "continuous", service="s" * 1_000).started().executed(1)  # an identity: at most 1,000
    assert process.post(job.events).status_code == 200
    text = process.client.get(f"{process.url}/metrics").text
    assert len(text) < 2_000_000
    assert 'job_name="' + "j" * 255 + "…" in text
    run = WorkflowRun("w" * 1_000_000).started().step_started("a").after(1).step_completed("a").completed()
    assert process.post(run.events).status_code == 200
    got = receiver.received
    got.wait_for(lambda: any(s.attributes.get("workflow.execution.id") == run.workflow_id for s in got.spans))
    root = next(
        s for s in got.spans if s.attributes.get("workflow.execution.id") == run.workflow_id and not s.parent_span_id
    )
    assert len(root.name) == 256 and root.name.endswith("…")


def _head_answer(sock: socket.socket) -> bytes:
    sock.settimeout(20)
    try:
        return sock.recv(4096)
    except OSError:
        return b""


def test_a_huge_header_gets_431_and_others_are_served(bridge):
    process, _ = bridge
    with socket.create_connection(("127.0.0.1", process.port)) as sock:
        sock.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            for _ in range(16 * 1024):  # up to 16 MiB, cut off well before
                sock.sendall(b"a" * 1024)
        except OSError:
            pass
        assert _head_answer(sock).startswith(b"HTTP/1.1 431")
    assert process.post(WorkflowRun().started().events).status_code == 200
    # A producer behind a proxy that adds such a header loses its batches: the log says so.
    told = [line for line in process.log.read_text().splitlines() if "refused a request from 127.0.0.1 (431)" in line]
    assert told and f"request head over {64 * 1024} bytes" in told[0], told


def test_headers_trickled_line_by_line_are_cut_off_while_others_are_served(bridge):
    process, _ = bridge
    socks = [socket.create_connection(("127.0.0.1", process.port)) for _ in range(50)]
    try:
        for sock in socks:
            sock.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\n")
        for i in range(3):  # a header line each second, never the blank line that ends the head
            time.sleep(1)
            assert process.post(WorkflowRun().started().events).status_code == 200
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.sendall(f"X-Line-{i}: y\r\n".encode())
        answers = [_head_answer(sock) for sock in socks]
    finally:
        for sock in socks:
            sock.close()
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers), {a[:40] for a in answers}


def test_memory_stays_bounded_through_the_corpus(bridge):
    process, _ = bridge
    status = Path(f"/proc/{process.proc.pid}/status").read_text()
    peak_kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
    print(f"\nhostile corpus: bridge peak RSS {peak_kib // 1024} MiB")
    assert peak_kib < 600 * 1024, f"peak RSS {peak_kib} KiB"
