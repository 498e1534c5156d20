"""Command-line experiments: `python -m experiments.train`, `.evaluate` and `.compare`."""
