"""dcm_keras/precision.py: the one rule `auto` precision follows, in train.py and the benchmarks."""

import os
import subprocess
import sys

import pytest

from dcm_keras.precision import auto_policy, cpu_flags

pytestmark = pytest.mark.core  # also run with oneDNN off and under JAX unless large (conftest.py)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("gpus, flags, policy", [
    (1, set(), "mixed_float16"),
    (2, {"avx512_bf16", "amx_bf16"}, "mixed_float16"),  # a GPU wins over bf16 CPU hardware
    (0, {"avx2", "avx512_bf16"}, "mixed_bfloat16"),
    (0, ["amx_bf16", "amx_tile"], "mixed_bfloat16"),
    (0, {"avx2", "avx512f", "fma"}, "float32"),
    (0, (), "float32"),
])
def test_auto_policy_rule_table(gpus, flags, policy):
    assert auto_policy(gpus, flags) == policy


def test_cpu_flags_of_this_machine_is_a_set_of_names():
    flags = cpu_flags()
    assert isinstance(flags, set) and all(isinstance(f, str) and f for f in flags)


def test_cpu_flags_reads_the_flags_lines_and_is_empty_when_unreadable(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some avx512_bf16 CPU\n"
                       "flags\t\t: fpu avx2 amx_bf16\n\nprocessor\t: 1\nflags\t\t: fpu avx2\n")
    assert cpu_flags(str(cpuinfo)) == {"fpu", "avx2", "amx_bf16"}
    assert cpu_flags(str(tmp_path / "missing")) == set()


def test_the_benchmarks_follow_the_rule_without_importing_tensorflow():
    # The benchmarks' parent process imports neither TensorFlow nor Keras: the rule must load
    # without them (the light library modules, not the dcm_keras package, which imports both).
    script = ("import sys\n"
              "from benchmarks.machine import resolve_precision\n"
              "cases = [({}, 'float32'), ({'gpus': ['/gpu:0']}, 'mixed_float16'),\n"
              "         ({'cpu_flags': ['avx512_bf16']}, 'mixed_bfloat16')]\n"
              "for machine, policy in cases:\n"
              "    assert resolve_precision('auto', machine) == policy, machine\n"
              "    assert resolve_precision('best', machine) == policy, machine\n"
              "assert resolve_precision('float32', {'gpus': ['/gpu:0']}) == 'float32'\n"
              "light = ('dcm_keras.errors', 'dcm_keras.precision')\n"
              "loaded = [m for m in sys.modules if m.split('.')[0] in "
              "('tensorflow', 'keras', 'dcm_keras') and m not in light]\n"
              "assert not loaded, loaded\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
