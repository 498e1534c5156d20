"""The script server the command-line tests run the scripts with (tests/script_server.py).

A served script must behave as `python -m` would: its own process, its arguments, environment and
working directory, its exit code, its output on the test's pipes, Ctrl-C and kills as for a
subprocess; and an environment read at import time must not be served. A served script's own
`python -m experiments.*` children (compare's training runs) are served by the same rule.
"""

import json
import os
import signal
import subprocess

import pytest

from script_server import ScriptServer, ServedProcess

pytestmark = pytest.mark.large  # starts a server process that imports TensorFlow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = """
import json, os, sys, time
print(json.dumps({"pid": os.getpid(), "argv": sys.argv[1:], "cwd": os.getcwd(),
                  "var": os.environ.get("PROBE_VAR"), "main": __name__,
                  "tensorflow_imported": "tensorflow" in sys.modules}), flush=True)
print("to stderr", file=sys.stderr, flush=True)
if sys.argv[1] == "sleep":
    try:
        print("sleeping", flush=True)
        time.sleep(120)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
if sys.argv[1] == "nested":  # starts a script as compare starts its runs
    import subprocess
    found = {}
    with open("nested.log", "w") as log:
        for name, options in (("file", {"stdout": log, "stderr": subprocess.STDOUT}),
                              ("pipe", {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}),
                              ("changed_env", {"stdout": log, "stderr": subprocess.STDOUT,
                                               "env": dict(os.environ, KERAS_BACKEND="jax")})):
            options.setdefault("env", dict(os.environ, PYTHONPATH=os.pathsep.join(
                [os.environ["PYTHONPATH"]] * 2)))  # repeated entries, as compare gives
            child = subprocess.Popen([sys.executable, "-m", "experiments.evaluate",
                                      "--helpshort"], **options)
            child.communicate() if name == "pipe" else child.wait()
            found[name] = [type(child).__name__, child.returncode]
    print(json.dumps(found), flush=True)
if sys.argv[1] == "sleep_uncaught":
    print("sleeping", flush=True)
    time.sleep(120)
sys.exit(int(sys.argv[2]))
"""


@pytest.fixture(scope="module")
def server():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get(
        "PYTHONPATH")])))
    server = ScriptServer(env, ROOT)
    yield server, env
    server.close()


@pytest.fixture
def probe_dir(tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    return str(tmp_path)


def test_a_served_script_is_its_own_process_with_its_arguments_and_exit_code(server, probe_dir):
    server, env = server
    proc = server.start("probe", ["exit", "3"], probe_dir, {**env, "PROBE_VAR": "given"})
    assert isinstance(proc, ServedProcess)
    out, err = proc.communicate(timeout=60)
    seen = json.loads(out)
    assert proc.returncode == 3
    assert seen["pid"] == proc.pid and proc.pid != os.getpid()
    assert seen["argv"] == ["exit", "3"] and seen["cwd"] == probe_dir
    assert seen["var"] == "given" and seen["main"] == "__main__"
    assert seen["tensorflow_imported"]  # what the server saves the script
    assert err.strip() == "to stderr"


def test_ctrl_c_and_kill_reach_the_script(server, probe_dir):
    server, env = server
    proc = server.start("probe", ["sleep"], probe_dir, env)
    assert proc.stdout.readline() and proc.stdout.readline() == "sleeping\n"
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    assert proc.stdout.read().strip() == "interrupted"

    proc = server.start("probe", ["sleep"], probe_dir, env)
    assert proc.stdout.readline() and proc.stdout.readline() == "sleeping\n"
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.2)
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL

    # Uncaught, Ctrl-C ends a served script as it ends Python: by the signal, after a traceback.
    proc = server.start("probe", ["sleep_uncaught"], probe_dir, env)
    assert proc.stdout.readline() and proc.stdout.readline() == "sleeping\n"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == -signal.SIGINT
    assert "KeyboardInterrupt" in proc.stderr.read()


def test_an_environment_read_at_import_time_is_not_served(server):
    server, env = server
    assert server.serves({**env, "DCM_DEBUG_PAUSE": "x"})  # read by the script, not at import
    assert server.serves({**env, "TF_CONFIG": "{}"})  # read when a strategy is built
    for name, value in (("KERAS_BACKEND", "jax"), ("TF_ENABLE_ONEDNN_OPTS", "maybe"),
                        ("TF_CPP_MIN_LOG_LEVEL", "0"), ("PYTHONPATH", "/elsewhere")):
        assert not server.serves({**env, name: value}), name


def test_a_served_scripts_own_scripts_are_served_when_they_can_be(server, probe_dir):
    server, env = server
    proc = server.start("probe", ["nested", "0"], probe_dir, env)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    found = json.loads(out.splitlines()[-1])
    # Output to a file and an environment the server was started with: a fork of the server
    # (absl ends --helpshort with exit code 1, served or not).
    assert found["file"] == ["ServedProcess", 1]
    # A pipe, or a backend chosen at import time: a real subprocess.
    assert found["pipe"] == ["Popen", 1] and found["changed_env"] == ["Popen", 1]
    log = open(os.path.join(probe_dir, "nested.log")).read()
    assert log.count("python -m experiments.evaluate --model=") == 2, log[-2000:]
