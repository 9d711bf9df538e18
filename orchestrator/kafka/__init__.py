"""Kafka: events in by a consumer group that ingests like the HTTP API."""
