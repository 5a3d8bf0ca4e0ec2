"""Reading a Phase-10 workflow's history from the engine's API: every page, only the window asked for."""

from datetime import UTC, datetime

import httpx
import pytest

from otel_bridge.receivers.timeline_api import ApiError, Window, executions, timeline


def _api(items: list[dict], cap: int, with_total: bool) -> httpx.Client:
    """An API that hands out at most `cap` executions a page, with or without a `total`."""

    def answer(request: httpx.Request) -> httpx.Response:
        skip = int(request.url.params["skip"])
        page = items[skip : skip + min(int(request.url.params["limit"]), cap)]
        return httpx.Response(200, json={"items": page, "total": len(items)} if with_total else page)

    return httpx.Client(transport=httpx.MockTransport(answer))


def _items(n: int) -> list[dict]:
    return [{"id": f"e{i}", "started_at": f"2026-11-30T08:{i:02d}:00"} for i in range(n)]


@pytest.mark.parametrize("with_total", [True, False], ids=["total", "bare-list"])
def test_every_page_is_read_whatever_the_api_caps_a_page_at(with_total):
    listed = list(executions(_api(_items(23), 7, with_total), "http://engine", "wf", Window()))
    assert listed == [f"e{i}" for i in range(23)]


def test_only_executions_started_in_the_window_are_taken_and_a_queued_one_in_none():
    items = [*_items(10), {"id": "queued", "started_at": None}]
    window = Window(since=datetime(2026, 11, 30, 8, 3, tzinfo=UTC), until=datetime(2026, 11, 30, 8, 6, tzinfo=UTC))
    assert list(executions(_api(items, 100, True), "http://engine", "wf", window)) == ["e3", "e4", "e5"]
    assert "queued" in list(executions(_api(items, 100, True), "http://engine", "wf", Window()))


def test_an_answer_that_is_no_list_of_executions_names_the_url():
    client = httpx.Client(transport=httpx.MockTransport(lambda _r: httpx.Response(200, json={"detail": "x"})))
    with pytest.raises(ApiError, match="http://engine/api/workflows/wf/executions answered no list"):
        list(executions(client, "http://engine", "wf", Window()))
    # Asked again as it asks (at once here, where 1, 2, 4 and 8 s took 15 s of the suite), then given up on.
    restarting = {"text": "restarting", "headers": {"Retry-After": "0"}}
    failing = httpx.Client(transport=httpx.MockTransport(lambda _r: httpx.Response(503, **restarting)))
    with pytest.raises(ApiError, match="answered 503: restarting"):
        list(executions(failing, "http://engine", "wf", Window()))


def test_an_id_a_message_told_is_one_segment_of_the_path_whatever_it_holds():
    asked: list[bytes] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.raw_path)
        return httpx.Response(200, json={"items": []})

    client = httpx.Client(transport=httpx.MockTransport(answer))
    timeline(client, "http://engine", "../../workflows/wf/executions?skip=0")
    list(executions(client, "http://engine", "wf/../x", Window()))
    assert asked == [
        b"/api/workflows/executions/..%2F..%2Fworkflows%2Fwf%2Fexecutions%3Fskip%3D0/timeline",
        b"/api/workflows/wf%2F..%2Fx/executions?skip=0&limit=100",
    ]


def test_an_api_that_does_not_page_ends_the_listing_at_its_first_page_repeated_not_never(caplog):
    # `skip` ignored, no total: the same page for ever, once asked for page after page without end.
    items = _items(3)
    asked: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(int(request.url.params["skip"]))
        return httpx.Response(200, json=items)

    listed = list(executions(httpx.Client(transport=httpx.MockTransport(answer)), "http://engine", "wf", Window()))
    assert listed == ["e0", "e1", "e2"] and asked == [0, 3]
    assert "answered the executions it had listed already at skip=3: the listing ends there (3 listed)" in caplog.text


def test_an_execution_listed_again_on_a_later_page_is_taken_once():
    # A run that began while the pages were read shifts the rest by one: the next page repeats one.
    pages = {0: _items(3), 3: [_items(3)[2], *_items(5)[3:]], 6: []}

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=pages[int(request.url.params["skip"])])

    listed = list(executions(httpx.Client(transport=httpx.MockTransport(answer)), "http://engine", "wf", Window()))
    assert listed == ["e0", "e1", "e2", "e3", "e4"]
