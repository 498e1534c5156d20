"""Helpers for the command-line experiment tests: subprocesses, their output, image folders.

The scripts run as users run them, `python -m experiments.<script>`, each in its own process:
a child forked by this worker's `script_server.ScriptServer` (TensorFlow already imported, which
saves about 4 s of CPU a script), or a plain subprocess where the environment asks for another
import (`script_server` says when; `DCM_TESTS_SERVED=0` for every script). Networks are WRN-10-1
on 8x8 images so that a two-epoch run takes seconds on two cores.
"""

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from script_server import ScriptServer

REPO = Path(__file__).resolve().parents[2]
# The TensorFlow/absl C++ runtime prints these on stderr whatever TF_CPP_MIN_LOG_LEVEL says.
NOISE_PREFIXES = ("WARNING: All log messages before absl::InitializeLog()", "I0000", "W0000",
                  "E0000")

# A tiny but complete DCM run: two WRN-10-1 with heads, 2 epochs, lr drop after the first.
TINY_TRAIN_FLAGS = ["--nets=wrn_10_1,wrn_10_1", "--image_size=8", "--batch_size=8",
                    "--lr_boundaries=1", "--lr=0.05"]


def tiny_train(folder, model_dir, *extra: str) -> List[str]:
    """`train` arguments of a one-epoch TINY_TRAIN_FLAGS run on an image folder."""
    return ["train", f"--dataset=image_folder:{folder}", f"--model_dir={model_dir}",
            "--epochs=1", *TINY_TRAIN_FLAGS, *extra]


def env() -> dict:
    variables = dict(os.environ)
    variables["TF_CPP_MIN_LOG_LEVEL"] = "3"
    variables["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO),
                                                            variables.get("PYTHONPATH")]))
    return variables


def command(module: str, *args: str) -> List[str]:
    return [sys.executable, "-m", f"experiments.{module}", *args]


_SERVER: List[ScriptServer] = []  # this worker's, started on first use


def _served(variables: Dict[str, str]) -> Optional[ScriptServer]:
    """This worker's script server if it can run a script with `variables`, else None."""
    if os.environ.get("DCM_TESTS_SERVED", "1") == "0":
        return None
    if not _SERVER:
        _SERVER.append(ScriptServer(env(), str(REPO)))
    return _SERVER[0] if _SERVER[0].serves(variables) else None


def run(module: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """Runs `python -m experiments.<module> args...` to completion, capturing its output."""
    proc = start(module, *args)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    return subprocess.CompletedProcess(command(module, *args), proc.returncode, out, err)


# Restores Ctrl-C's default before exec'ing the script: a shell starts background commands with
# SIGINT ignored, a child inherits that, and Python then never raises KeyboardInterrupt.
_SIGINT_DEFAULT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                   "os.execv(sys.executable, [sys.executable] + sys.argv[1:])")


def start(module: str, *args: str, extra_env: Optional[Dict[str, str]] = None
          ):
    """Starts `python -m experiments.<module> args...` without waiting for it, with Ctrl-C
    (SIGINT) handled as in a terminal even when this process inherited it ignored: a
    `subprocess.Popen`, or a `script_server.ServedProcess` with the same methods."""
    return start_module(f"experiments.{module}", list(args), str(REPO), extra_env)


def start_module(module: str, args: List[str], cwd: str,
                 extra_env: Optional[Dict[str, str]] = None):
    """`start` for any module importable from `cwd` or the repository (a test's own script)."""
    variables = {**env(), **(extra_env or {})}
    server = _served(variables)
    if server is not None:
        return server.start(module, list(args), cwd, variables)
    argv = [sys.executable, "-m", module, *args]
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        argv = [argv[0], "-c", _SIGINT_DEFAULT, *argv[1:]]
    return subprocess.Popen(argv, cwd=cwd, env=variables, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


class Watched:
    """A started script whose stdout and stderr are read as they come (by two threads).

    `wait_for(text)` blocks until a line of stdout contains `text`; `finish()` waits for the exit.
    """

    def __init__(self, module: str, *args: str, extra_env: Optional[Dict[str, str]] = None):
        self.proc = start(module, *args, extra_env=extra_env)
        self.out: List[str] = []
        self.err: List[str] = []
        self._lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self._threads = [threading.Thread(target=self._read, args=(self.proc.stdout, self.out,
                                                                   self._lines), daemon=True),
                         threading.Thread(target=self._read, args=(self.proc.stderr, self.err,
                                                                   None), daemon=True)]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _read(stream, store, lines):
        for line in stream:
            store.append(line)
            if lines is not None:
                lines.put(line)
        if lines is not None:
            lines.put(None)  # end of output

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {text!r} within {timeout:.0f} s\n{self.describe()}")
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait()
                raise AssertionError(f"exited before printing {text!r}\n{self.describe()}")
            if text in line:
                return line

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=60)

    def finish(self, timeout: float) -> int:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"still running after {timeout:.0f} s\n{self.describe()}")
        for thread in self._threads:
            thread.join(timeout=10)
        return self.proc.returncode

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def describe(self) -> str:
        return (f"exit {self.proc.returncode}\nstdout:\n{self.stdout[-3000:]}\n"
                f"stderr:\n{self.stderr[-3000:]}")


def run_all(cases: Dict[str, tuple], root: Path) -> Dict[str, tuple]:
    """Runs every case at once: name -> `(script, *args)`, or `((script, *args), extra_env)`.

    Returns name -> `(exit code, message lines of stderr, its --model_dir or root/"none")`.
    """
    cases = {name: case if isinstance(case, tuple) else (case, {})
             for name, case in cases.items()}
    folders = {name: Path(next((a.split("=", 1)[1] for a in args
                                if a.startswith("--model_dir=")), root / "none"))
               for name, (args, _) in cases.items()}
    procs = {name: start(*args, extra_env=extra) for name, (args, extra) in cases.items()}
    results = {}
    for name, proc in procs.items():
        try:
            _, err = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        results[name] = (proc.returncode, message_lines(err), folders[name])
    return results


def message_lines(stderr: str) -> List[str]:
    """The lines of stderr written by our code or absl's flag parser (runtime noise removed)."""
    return [line for line in stderr.splitlines()
            if line.strip() and not line.startswith(NOISE_PREFIXES)]


def one_line_error(outcome) -> str:
    """Asserts a `(returncode, stderr lines, ...)` outcome failed with exactly one error line."""
    code, lines = outcome[0], outcome[1]
    assert code != 0
    assert not any("Traceback" in line for line in lines), lines
    # absl's parser adds a hint after its FATAL line; our own errors are exactly one line.
    errors = [line for line in lines if line.startswith(("error:", "FATAL Flags parsing error"))]
    assert len(errors) == 1, lines
    if errors[0].startswith("error:"):
        assert lines == errors, lines
    return errors[0]


def describe(result) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"


def write_image_folder(root: Path, classes: int, train_per_class: int, test_per_class: int,
                       size: int = 8, seed: int = 0) -> str:
    """An image_folder dataset of PNGs: class c brightens its own band of a noisy image."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for c in range(classes):
            directory = root / split / f"class{c:03d}"
            directory.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = rng.integers(0, 100, (size, size, 3)).astype(np.uint8)
                row = c % size
                image[row] = np.minimum(image[row].astype(int) + 150, 255).astype(np.uint8)
                png = tf.io.encode_png(image).numpy()
                (directory / f"{i}.png").write_bytes(png)
    return str(root)


def h5_arrays(path) -> Dict[str, np.ndarray]:
    """Every dataset of an HDF5 file (a `.weights.h5` checkpoint), by its path in the file."""
    import h5py

    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: arrays.__setitem__(name, item[()])
                     if isinstance(item, h5py.Dataset) else None)
    return arrays


def free_ports(count: int) -> List[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (bound to port 0, then released)."""
    import socket

    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
