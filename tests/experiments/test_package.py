"""`import experiments` sets the TensorFlow settings every script runs with, before TensorFlow."""

import os
import subprocess
import sys

import pytest

from cli_helpers import REPO
from experiments import X86

pytestmark = pytest.mark.large  # runs subprocesses: `make test-fast` skips it

PROBE = ("import os, experiments, tensorflow as tf\n"
         "from tensorflow.python.util import _pywrap_util_port as port\n"
         "print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'), port.IsMklEnabled())\n")


def probe(**env_changes):
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env.update(env_changes, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", PROBE], cwd=str(REPO), env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.split()[-2:]


@pytest.mark.skipif(not X86, reason="the setting is made on x86 CPUs only")
def test_onednn_is_on_for_the_scripts_unless_the_user_says_otherwise():
    # TensorFlow leaves oneDNN off on x86 CPUs without AVX512-VNNI/BF16, AVX-VNNI or AMX, where
    # its Eigen kernels ran the DCM step at 0.68x (docs/performance.md).
    assert probe() == ["1", "True"]
    assert probe(TF_ENABLE_ONEDNN_OPTS="0") == ["0", "False"]
