"""The contact policy: caps, quiet hours, consent, suppression, CRM/loyalty rules, conflicts.

`decision.decide` is a pure function; `store` is its only I/O. The condition language,
durations and local-time arithmetic here are shared with journeys.
"""
