"""A corpus of bad bodies and events: each gets its documented answer, never a 500, never a crash."""

import gzip
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from bridge_process import BridgeProcess
from builders import WorkflowRun
from otlp_receiver import OtlpHttpReceiver

BODY_LIMIT = 10 * 1024 * 1024  # the default
ATTRIBUTE_LIMIT = 256


@pytest.fixture(scope="module")
def bridge(tmp_path_factory) -> Iterator[tuple[BridgeProcess, OtlpHttpReceiver]]:
    receiver = OtlpHttpReceiver()
    process = BridgeProcess(
        tmp_path_factory.mktemp("hostile"),
        receiver.endpoint,
        body_timeout_seconds="2",
        attribute_value_limit=str(ATTRIBUTE_LIMIT),
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


def test_memory_stays_bounded_through_the_corpus(bridge):
    process, _ = bridge
    status = Path(f"/proc/{process.proc.pid}/status").read_text()
    peak_kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
    print(f"\nhostile corpus: bridge peak RSS {peak_kib // 1024} MiB")
    assert peak_kib < 600 * 1024, f"peak RSS {peak_kib} KiB"
