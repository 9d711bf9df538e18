"""Journey tests: test files kept in a workspace, run on Temporal's time-skipping server."""
