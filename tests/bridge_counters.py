"""What the bridge's own counters hold, read from its MetricsHub in-process."""

from otel_bridge.export.metrics import MetricsHub


def counted(metrics: MetricsHub, name: str) -> float:
    """The sum of every point of the instrument `name` (e.g. "otel_bridge.runs.set_aside")."""
    return sum(
        point.value
        for data in metrics.collect()
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == name
        for point in metric.data.data_points
    )
