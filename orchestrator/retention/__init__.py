"""Retention: what the engine keeps about users, for how long, and the scheduled run
that deletes (or blanks) the rest in small batches (see README, "Retention")."""
