"""Whose series a producer's metrics are: its resource, and the process that wrote them."""

from otel_bridge.correlate.outputs import Observation, Resource
from otel_bridge.export.metrics import MetricsHub

_EXECUTED = (("job.name", "sync"), ("job.type", "continuous"), ("job.execution.result", "success"))


def _resources(hub: MetricsHub) -> dict[str, dict[str, object]]:
    """Each resource the hub exports under, by its service's name."""
    return {
        str(rm.resource.attributes["service.name"]): dict(rm.resource.attributes)
        for data in hub.collect()
        for rm in data.resource_metrics
    }


def test_a_producers_series_say_which_process_wrote_them_as_the_bridges_own_do(monkeypatch):
    # OTLP's single writer: several bridges (a sidecar in each of a service's pods) write that service's
    # cumulative series; alike, a backend reads them as one stream going up and down.
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    hub = MetricsHub()
    hub.record([Observation("job.executions", 1, _EXECUTED, Resource("shop", "prod"))])
    hub.record([Observation("otel_bridge.events.accepted", 1, (("receiver", "http"),), None)])
    resources = _resources(hub)
    own = resources["otel-bridge"]["service.instance.id"]
    assert resources["shop"] == {
        "service.name": "shop",
        "deployment.environment.name": "prod",
        "service.instance.id": own,
    }


def test_the_writer_is_the_one_otel_resource_attributes_names_a_pods_for_one(monkeypatch):
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.instance.id=shop.shop-7d9f-x2k.otel-bridge")
    hub = MetricsHub()
    hub.record([Observation("job.executions", 1, _EXECUTED, Resource("shop", "prod"))])
    assert _resources(hub)["shop"]["service.instance.id"] == "shop.shop-7d9f-x2k.otel-bridge"
