"""Command-line experiments: `python -m experiments.train`, `.evaluate` and `.compare`.

Importing this package sets the TensorFlow settings every script runs with (before TensorFlow is
imported, so they take effect): `TF_ENABLE_ONEDNN_OPTS=1` on x86 CPUs. TensorFlow turns its oneDNN
kernels on by itself only where the CPU has AVX512-VNNI, AVX512-BF16, AVX-VNNI or AMX; on an
AVX2-only CPU it falls back to Eigen kernels, which ran the DCM step slower (docs/performance.md).
A value the user set, such as `TF_ENABLE_ONEDNN_OPTS=0`, is kept.
"""

import os
import platform

X86 = platform.machine().lower() in ("x86_64", "amd64")
if X86:
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
