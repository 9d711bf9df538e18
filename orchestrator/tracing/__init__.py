"""OpenTelemetry traces: off by default, on with an OTLP endpoint; one trace from the
ingestion request through routing, the journey workflow and its send activity to the
outgoing webhook (which carries a W3C `traceparent` header)."""
