"""`orchestrator doctor`: a deployment's configuration and connectivity, checked in plain words."""
