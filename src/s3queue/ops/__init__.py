"""Operating a queue: the command line, the dashboard, metrics and health, the
doctor and the demo (above the worker runtime)."""
