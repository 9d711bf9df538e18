"""A user's data across its life: who they are (identity), erasure (GDPR art. 17,
CCPA) and export (art. 15)."""
