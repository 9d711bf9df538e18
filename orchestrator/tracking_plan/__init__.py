"""The tracking plan: a JSON Schema per event and for identify traits, enforced or reported."""
