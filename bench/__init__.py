"""Benchmarks for s3queue, run by hand (``python -m bench ...``); see docs/BENCHMARKS.md."""
