"""Deterministic ids: replays, restarts and replicas agree without coordination."""

import hashlib

from otel_bridge import RunIdentity, root_span_id, trace_id_for, traceparent
from otel_bridge.cli import main
from otel_bridge.ids import attempt_span_id


def test_trace_id_is_the_documented_hash():
    expected = hashlib.sha256(b"trace\x1fdurable-effect\x1fprod\x1fshop\x1fabc").digest()[:16]
    assert trace_id_for("durable-effect", "prod", "shop", "abc") == expected


def test_an_attempts_span_id_is_the_documented_hash():
    # What a producer in another language computes to start its own spans under a step's attempt.
    expected = hashlib.sha256(b"attempt\x1fdurable-effect\x1fprod\x1fshop\x1fabc\x1fpay\x1f2").digest()[:8]
    assert attempt_span_id(RunIdentity("durable-effect", "prod", "shop", "abc"), "pay", 2) == expected


def test_field_boundaries_matter():
    assert trace_id_for("e", "ab", "c", "d") != trace_id_for("e", "a", "bc", "d")


def test_span_ids_differ_by_kind_and_attempt():
    run = RunIdentity("durable-effect", "prod", "shop", "abc")
    ids = {root_span_id(run), attempt_span_id(run, "a", 1), attempt_span_id(run, "a", 2)}
    assert len(ids) == 3 and all(len(i) == 8 for i in ids)


def test_trace_id_command_prints_a_w3c_traceparent(capsys):
    assert main(["trace-id", "--env", "prod", "--service", "shop", "--workflow-id", "abc"]) == 0
    run = RunIdentity("durable-effect", "prod", "shop", "abc")
    expected = traceparent(trace_id_for("durable-effect", "prod", "shop", "abc"), root_span_id(run))
    assert capsys.readouterr().out.strip() == expected
    assert expected.startswith("00-") and expected.endswith("-01") and len(expected) == 55


def test_trace_id_command_says_not_sampled_when_the_bridge_keeps_the_run_back(capsys, monkeypatch):
    # A producer's own spans below the run's root (parent-based sampling) then follow the bridge's choice.
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    assert main(["trace-id", "--env", "prod", "--service", "shop", "--workflow-id", "abc"]) == 0
    assert capsys.readouterr().out.strip().endswith("-00")
