"""The service: settings, database, HTTP API, ingestion and routing, CLI, Temporal wiring."""
