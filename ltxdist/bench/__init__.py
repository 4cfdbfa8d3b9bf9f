"""Benchmark infrastructure: timing statistics, environment capture, results files, the suite runner."""
