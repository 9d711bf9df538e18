"""Logs as text (the default) or JSON lines, each line carrying the journey, user,
workflow and message ids of the work it is about, and the trace it belongs to."""
