"""A user's data across its life: who they are (identity), erasure and export."""
