"""A user's data across its life: erasure (GDPR art. 17, CCPA) and export (art. 15)."""
