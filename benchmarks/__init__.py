"""Benchmarks of dcm_keras (run as modules, e.g. `python -m benchmarks.throughput`).

The benchmarks time what the scripts run, so they take the scripts' TensorFlow settings
(`experiments/__init__.py`) before TensorFlow is imported.
"""

import experiments  # noqa: F401  (sets TF_ENABLE_ONEDNN_OPTS before TensorFlow's import)
