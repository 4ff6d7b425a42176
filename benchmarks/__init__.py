"""Benchmarks of the migration (run them from the repository root, see benchmarks/run.py)."""
