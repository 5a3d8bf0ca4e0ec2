"""When each producer was last heard from, as the store keeps it across restarts."""

import logging

from otel_bridge.state.hearings import FORGOTTEN_AFTER_SECONDS, Hearings, decoded

NOW = 1_800_000_000.0
SHOP = ("durable-effect", "production", "shop")
BILLING = ("event-sourced", "production", "billing")


def test_what_is_kept_reads_back_as_it_was_written():
    kept = Hearings({SHOP: NOW - 60, BILLING: NOW - 5}, {"ghost@production": NOW - 3600})
    assert decoded(kept.encoded()) == kept


def test_nothing_kept_yet_is_nothing_heard_and_nothing_expected():
    assert decoded(None) == Hearings()


def test_a_bookmark_that_does_not_read_is_said_and_read_as_nothing_kept(caplog):
    with caplog.at_level(logging.WARNING, "otel_bridge"):
        assert decoded(b'{"heard": [["shop"]]}') == Hearings()
    assert "when the producers were last heard from could not be read" in caplog.text
    assert "counted from now" in caplog.text


def test_replicas_merged_keep_the_later_hearing_of_each_and_the_earlier_start_of_each_expectation():
    ours = Hearings({SHOP: NOW - 60, BILLING: NOW - 500}, {"ghost@production": NOW - 100})
    theirs = Hearings({SHOP: NOW - 10}, {"ghost@production": NOW - 3600, "late@production": NOW})

    merged = ours.merged(theirs)

    assert merged.heard == {SHOP: NOW - 10, BILLING: NOW - 500}
    assert merged.expected_since == {"ghost@production": NOW - 3600, "late@production": NOW}
    assert theirs.merged(ours) == merged


def test_an_expected_producer_is_expected_since_it_first_was_and_one_new_to_the_store_since_now():
    kept = Hearings({}, {"ghost@production": NOW - 3600})
    expecting = kept.expecting({"ghost@production": 900, "new@production": 900}, NOW)
    assert expecting.expected_since == {"ghost@production": NOW - 3600, "new@production": NOW}


def test_a_producer_taken_out_of_those_expected_and_named_again_is_expected_from_then():
    kept = Hearings({}, {"ghost@production": NOW - 3600, "shop@production": NOW - 3600})
    taken_out = kept.expecting({"shop@production": 900}, NOW)
    assert taken_out.expected_since == {"shop@production": NOW - 3600}
    named_again = taken_out.expecting({"shop@production": 900, "ghost@production": 900}, NOW + 60)
    assert named_again.expected_since == {"shop@production": NOW - 3600, "ghost@production": NOW + 60}


def test_a_bridge_expecting_none_leaves_the_expectations_as_they_are():
    # `otel-bridge replay` on the server's state file, without its settings, took every expectation out: the
    # server's next start counted its producers from then.
    kept = Hearings({SHOP: NOW - 60}, {"ghost@production": NOW - 3600})
    assert kept.expecting({}, NOW) == kept


def test_an_expectation_dated_ahead_of_the_clock_counts_from_now():
    # A clock set back: a producer expected "in an hour" would be silent for a negative time, never told.
    kept = Hearings({}, {"ghost@production": NOW + 3600})
    assert kept.expecting({"ghost@production": 900}, NOW).expected_since == {"ghost@production": NOW}


def test_a_producer_not_heard_from_in_a_week_is_forgotten_unless_it_is_expected():
    old = NOW - FORGOTTEN_AFTER_SECONDS - 1
    kept = Hearings({SHOP: old, BILLING: old}, {})
    assert kept.expecting({"shop@production": 900}, NOW).heard == {SHOP: old}
    assert kept.expecting({}, NOW - 2).heard == {SHOP: old, BILLING: old}  # a week to the second: still kept
    # Nor by a bridge that expects none, while the store holds it expected (the server's).
    assert Hearings({SHOP: old}, {"shop@production": old}).expecting({}, NOW).heard == {SHOP: old}


def test_a_starting_bridge_tells_the_expected_producers_hearings_and_the_latest_others_up_to_its_producers():
    # Past max_producers every new producer is counted as one: a week of producers that came and went must not
    # take the places of those heard next.
    heard = {("durable-effect", f"pr-{n}", "shop"): NOW - 1000 + n for n in range(5)} | {
        ("durable-effect", "production", "billing"): NOW - 10_000,
        ("event-sourced", "production", "billing"): NOW,
    }
    kept = Hearings(heard, {})

    told = kept.told_again({"billing@production": 900}, producers=3)

    assert told == {
        ("durable-effect", "production", "billing"): NOW - 10_000,  # expected: always, by each engine
        ("event-sourced", "production", "billing"): NOW,
        ("durable-effect", "pr-4", "shop"): NOW - 996,  # the two latest of the others
        ("durable-effect", "pr-3", "shop"): NOW - 997,
    }
    assert kept.told_again({}, producers=100) == heard
