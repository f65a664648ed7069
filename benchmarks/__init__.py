"""Benchmarks of the course's helpers (run them as modules: ``python -m benchmarks.d2l_vs_utils``)."""
