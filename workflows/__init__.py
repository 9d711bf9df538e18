"""The journey interpreter: the Temporal workflow, its activities and the journey format."""
