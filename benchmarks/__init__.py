"""Benchmarks of dcm_keras (run as modules, e.g. `python -m benchmarks.throughput`)."""
