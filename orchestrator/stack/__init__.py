"""The embedded stack: real Postgres and Temporal as child processes, and a webhook sink."""
