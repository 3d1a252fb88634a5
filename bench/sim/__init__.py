"""Deterministic simulation: the real Queue and Worker for hundreds of pods on one
virtual-time loop over a simulated S3 with seeded faults; see docs/SIMULATION.md."""
