"""Runs the scripts the tests drive in forked children of a process that imported TensorFlow once.

Each `python -m experiments.<script>` the tests start spends about 4 s of CPU importing TensorFlow
and Keras before it does anything (4.0 to 4.7 s, docs/test_logs/script_import_cpu_*.log), and the
large tests started 166 Python processes (docs/layout.md says where that was measured). A
`ScriptServer` (one per pytest worker) imports `experiments` (its TensorFlow settings),
TensorFlow, Keras and `dcm_keras`, runs no operation, and then forks a child for each script:
the child takes the test's arguments, environment, working directory, stdout and stderr (the pipe
ends travel over a Unix socket) and runs the module as `__main__` with `runpy`, exactly as
`python -m` would after those imports. The child is a real
process with its own PID, so signals, kills, locks and `/proc` checks behave as for a subprocess;
`ServedProcess` gives the test the `subprocess.Popen` methods it uses.

What a child cannot share with the server, it does not get: a script is started as a plain
subprocess instead when its environment differs from the server's in anything read when
TensorFlow, Keras or JAX is imported (`IMPORT_TIME_PREFIXES`), e.g. another `KERAS_BACKEND` or
`TF_ENABLE_ONEDNN_OPTS`. `TF_CONFIG` is not one of them: TensorFlow reads it when a strategy
is built (`experiments.cluster` reads it too, after start-up), so multi-worker scripts are
served. A test that checks what happens at import time (the
runtime's start-up lines, which modules a script imports) starts its own subprocess.
`DCM_TESTS_SERVED=0` turns the server off: every script is then a plain subprocess.

A served script's own `python -m experiments.<script>` children (`compare` starts one `train` per
run) are served too, under the same rule: in a served child, `subprocess.Popen` asks the server
for the fork when it is given such a command, an environment it could serve, and files (not
pipes) for stdout and stderr, and is the real `Popen` otherwise. The run's child is then the
server's child, not the script's: the script stops it by its PID, as `compare` does.
"""

import atexit
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

# Variables read when TensorFlow, Keras, JAX or Python start: a different value needs a fresh
# interpreter.
IMPORT_TIME_PREFIXES = ("TF_", "KERAS_", "XLA_", "JAX_", "CUDA", "PYTHON", "OMP_", "MKL",
                        "LD_", "MALLOC")
READ_AFTER_IMPORT = frozenset({"TF_CONFIG"})  # read when the cluster resolver is built
_MAX_MESSAGE = 1 << 20


def import_time_environment(env: Dict[str, str]) -> Dict[str, str]:
    """The variables of `env` read at start-up; PYTHONPATH without repeated entries (the first
    of each decides imports, so `compare`'s repo root put in front of itself changes nothing)."""
    found = {k: v for k, v in env.items()
             if k.startswith(IMPORT_TIME_PREFIXES) and k not in READ_AFTER_IMPORT}
    if "PYTHONPATH" in found:
        entries = [entry for entry in found["PYTHONPATH"].split(os.pathsep) if entry]
        found["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(entries))
    return found


# === The server (its own process) ===


def _run_module(module: str, args: List[str], cwd: str, env: Dict[str, str]) -> int:
    """In a forked child: what `python -m module args...` does after its imports. Returns the
    exit code (or re-raises Ctrl-C's signal, as Python does for an uncaught KeyboardInterrupt)."""
    import importlib
    import runpy
    import traceback

    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    subprocess.Popen = _nested_popen(subprocess.Popen)
    importlib.reload(sys.modules["experiments"])  # its settings, applied to this environment
    sys.path[0] = cwd  # as `python -m` puts the working directory first
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            code = exit_.code or 0
        else:
            print(exit_.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        _finish()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        code = 130
    except BaseException:  # noqa: BLE001 - an uncaught exception: a traceback and exit 1
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    _finish()
    return code


def _finish() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


# Set by `serve` in the server, inherited by its children: where to ask for a fork, and the
# import-time environment every served script shares.
_SERVER_PATH: Optional[str] = None
_SERVER_IMPORT_ENV: Dict[str, str] = {}


def _nested_popen(real):
    """`subprocess.Popen` for a served child: its `python -m experiments.*` children are served."""

    def popen(args, *positional, **kwargs):
        module = _served_module(args)
        env = dict(os.environ if kwargs.get("env") is None else kwargs["env"])
        stdout = _file_descriptor(kwargs.get("stdout"), 1)
        stderr = stdout if kwargs.get("stderr") == subprocess.STDOUT else _file_descriptor(
            kwargs.get("stderr"), 2)
        if (module is None or positional or None in (stdout, stderr)
                or set(kwargs) - {"env", "stdout", "stderr", "cwd"}
                or import_time_environment(env) != _SERVER_IMPORT_ENV):
            return real(args, *positional, **kwargs)
        return _request(_SERVER_PATH, module, list(args[3:]), kwargs.get("cwd") or os.getcwd(),
                        env, stdout, stderr)

    return popen


def _served_module(args) -> Optional[str]:
    """`experiments.X` when `args` is `[this Python, "-m", "experiments.X", ...]`, else None."""
    if (isinstance(args, (list, tuple)) and len(args) >= 3 and args[0] == sys.executable
            and args[1] == "-m" and str(args[2]).startswith("experiments.")):
        return str(args[2])
    return None


def _file_descriptor(stream, inherited: int) -> Optional[int]:
    """The descriptor a child's stream goes to: inherited, a file's or a descriptor; None for a
    pipe (or anything else), which only a real subprocess gives."""
    if stream is None:
        return inherited
    if isinstance(stream, int):
        return stream if stream >= 0 else None
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def _request(path: str, module: str, args: List[str], cwd: str, env: Dict[str, str],
             stdout: int, stderr: int) -> "ServedProcess":
    """Asks the server at `path` to fork `module` with these streams; the child as a process."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        conn.connect(path)
        request = {"module": module, "args": args, "cwd": cwd, "env": env}
        socket.send_fds(conn, [json.dumps(request).encode()], [stdout, stderr])
        return ServedProcess(conn, [sys.executable, "-m", module, *args], None, None)
    except BaseException:
        conn.close()
        raise


def _start_child(listener: socket.socket, conn: socket.socket, open_conns) -> Optional[int]:
    message, fds, _, _ = socket.recv_fds(conn, _MAX_MESSAGE, 2)
    if not message or len(fds) != 2:
        for fd in fds:
            os.close(fd)
        return None
    request = json.loads(message)
    _finish()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            listener.close()
            for other in open_conns:
                other.close()
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(fds[0], 1)
            os.dup2(fds[1], 2)
            for fd in (devnull, *fds):
                os.close(fd)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            code = _run_module(request["module"], request["args"], request["cwd"], request["env"])
        finally:
            os._exit(code)
    for fd in fds:
        os.close(fd)
    conn.send(json.dumps({"pid": pid}).encode())
    return pid


def serve(path: str) -> None:
    """Imports the backend, then forks a child for each request on the socket at `path`, until
    stdin closes (the pytest worker that started the server is gone)."""
    import experiments  # noqa: F401 - sets TF_ENABLE_ONEDNN_OPTS as the scripts do
    import keras  # noqa: F401 - imports TensorFlow
    import dcm_keras  # noqa: F401

    global _SERVER_PATH, _SERVER_IMPORT_ENV
    _SERVER_PATH, _SERVER_IMPORT_ENV = path, import_time_environment(os.environ)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the terminal is for pytest
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    print("ready", flush=True)
    children: Dict[int, socket.socket] = {}
    while True:
        ready, _, _ = select.select([listener, sys.stdin], [], [], 0.05)
        if sys.stdin in ready and not os.read(sys.stdin.fileno(), 1):
            break
        if listener in ready:
            conn, _ = listener.accept()
            pid = _start_child(listener, conn, children.values())
            if pid is None:
                conn.close()
            else:
                children[pid] = conn
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = children.pop(pid, None)
            if conn is not None:
                try:
                    conn.send(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}
                                         ).encode())
                except OSError:
                    pass  # the test stopped waiting for it
                conn.close()
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# === The test's side ===


class ServedProcess:
    """A script running in a child of the server, with the `subprocess.Popen` methods the tests
    use: `pid`, `stdout`/`stderr` (text pipes), `poll`, `wait`, `communicate`, `send_signal`,
    `terminate`, `kill` and `returncode`."""

    def __init__(self, conn: socket.socket, args: List[str], stdout, stderr):
        self.args = args
        self._conn = conn
        self.stdout, self.stderr = stdout, stderr
        self.returncode: Optional[int] = None
        self.pid = json.loads(conn.recv(_MAX_MESSAGE))["pid"]

    def _receive(self, timeout: Optional[float]) -> None:
        if self.returncode is not None:
            return
        ready, _, _ = select.select([self._conn], [], [], timeout)
        if ready:
            message = self._conn.recv(_MAX_MESSAGE)
            self.returncode = json.loads(message)["returncode"] if message else -signal.SIGKILL
            self._conn.close()

    def poll(self) -> Optional[int]:
        self._receive(0)
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        self._receive(timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: Optional[float] = None):
        """Reads stdout and stderr to their end, then waits: (stdout, stderr)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        chunks = {self.stdout: [], self.stderr: []}
        open_streams = [s for s in chunks if s is not None]
        while open_streams:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select(open_streams, [], [], left)
            if not ready:
                raise subprocess.TimeoutExpired(self.args, timeout)
            for stream in ready:
                data = os.read(stream.fileno(), 1 << 16)
                if data:
                    chunks[stream].append(data)
                else:
                    open_streams.remove(stream)
                    stream.close()
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        self.wait(left)
        return tuple(b"".join(parts).decode(errors="replace") for parts in chunks.values())


class ScriptServer:
    """The server of one pytest worker, started on first use and stopped when the worker ends."""

    def __init__(self, env: Dict[str, str], cwd: str):
        self._folder = tempfile.mkdtemp(prefix="dcm_script_server_")
        self.path = os.path.join(self._folder, "socket")
        self.import_env = import_time_environment(env)
        self._proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), self.path], cwd=cwd, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self._proc.stdout.readline()
        if line.strip() != "ready":
            self._proc.kill()
            raise RuntimeError(f"the script server did not start: {line!r}")
        atexit.register(self.close)

    def serves(self, env: Dict[str, str]) -> bool:
        return self._proc.poll() is None and import_time_environment(env) == self.import_env

    def start(self, module: str, args: List[str], cwd: str, env: Dict[str, str]) -> ServedProcess:
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        try:
            proc = _request(self.path, module, list(args), cwd, env, out_write, err_write)
        finally:
            os.close(out_write)
            os.close(err_write)
        proc.stdout = os.fdopen(out_read, "r", errors="replace")
        proc.stderr = os.fdopen(err_read, "r", errors="replace")
        return proc

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()  # the server kills what still runs and exits
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        try:
            os.unlink(self.path)
            os.rmdir(self._folder)
        except OSError:
            pass


if __name__ == "__main__":
    serve(sys.argv[1])
