"""Outbound channel adapters (email, push, in-app, web) and their shared signed delivery."""
