"""Experiment reports: the statistics every report surface reads through."""
