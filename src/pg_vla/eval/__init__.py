"""Closed-loop evaluation: environment adapters, the evaluation agent, simulator benchmarks."""
