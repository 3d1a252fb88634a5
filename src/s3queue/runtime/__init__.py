"""The worker runtime: the pool that runs handlers, its settings, its pacing and
its periodic jobs (above the public Queue)."""
