"""Experiments: assignments as data, and evaluating other allocations on their logs."""
