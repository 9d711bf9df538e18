"""The Temporal SDK's own metrics: its runtime serves them on a Prometheus port.

Task latencies, failures, slots and pollers come from the SDK's Rust core: with
`PrometheusConfig` it serves them itself on the given address. We ask for Prometheus's
conventions (seconds, `_seconds` and `_total` suffixes), which the dashboard and alert
rules in `orchestrator/ops/` assume.
"""

from __future__ import annotations

from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

# The SDK metrics the dashboard and alert rules use (the SDK emits more; see
# https://docs.temporal.io/references/sdk-metrics). A counter appears at its first count.
SDK_METRICS = frozenset({
    "temporal_workflow_task_schedule_to_start_latency_seconds",
    "temporal_activity_schedule_to_start_latency_seconds",
    "temporal_workflow_task_execution_latency_seconds",
    "temporal_activity_execution_latency_seconds",
    "temporal_workflow_task_execution_failed_total",
    "temporal_activity_execution_failed_total",
    "temporal_workflow_completed_total",
    "temporal_worker_task_slots_available",
    "temporal_request_latency_seconds",
    "temporal_sticky_cache_hit_total",
})  # fmt: skip


class SdkMetricsUnavailable(Exception):
    """The SDK's metrics port cannot be served."""


def runtime_with_metrics(host: str, port: int) -> Runtime | None:
    """A Temporal runtime serving the SDK's metrics on host:port (None with port 0)."""
    if not port:
        return None
    config = PrometheusConfig(
        bind_address=f"{host}:{port}",
        counters_total_suffix=True,
        unit_suffix=True,
        durations_as_seconds=True,
    )
    try:
        return Runtime(telemetry=TelemetryConfig(metrics=config))
    except ValueError as exc:  # the core says why: "Address already in use", ...
        raise SdkMetricsUnavailable(
            f"cannot serve the Temporal SDK's metrics on {host}:{port}: {exc} (set "
            "ORCHESTRATOR_TEMPORAL_METRICS_PORT to a free port, or 0 for none)"
        ) from None
