"""The parent's handle on a worker process of `benchmarks.throughput` (see `benchmarks.workers`)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from benchmarks.workers import PREFIX

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class WorkerError(RuntimeError):
    """A worker reported an error or exited without a result (the message ends with its log's
    tail)."""


class Worker:
    """A worker process speaking JSON lines (commands on stdin, `PREFIX` events on stdout)."""

    def __init__(self, spec: dict, log_dir: str, label: str):
        self.label = label
        self.log_path = os.path.join(log_dir, re.sub(r"[^A-Za-z0-9_.-]", "_", label) + ".log")
        env = dict(os.environ)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        env.update(spec.get("env") or {})  # settings read at TensorFlow's start (oneDNN, malloc)
        env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
        self._log = open(self.log_path, "w")
        # The worker's entry is throughput's main (`--worker`): its flags are declared there.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.throughput", "--worker", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
            cwd=REPO_ROOT, env=env)
        self.rss_mb = None

    def _tail(self) -> str:
        self._log.flush()
        with open(self.log_path) as f:
            return "".join(f.readlines()[-25:])

    def read(self) -> dict:
        """The worker's next event; raises WorkerError for an error or an early exit."""
        for line in self.proc.stdout:
            if line.startswith(PREFIX):
                message = json.loads(line[len(PREFIX):])
                if message["event"] == "error":
                    raise WorkerError(f"{self.label}: {message['error']}\n{self._tail()}")
                return message
        self.wait()
        raise WorkerError(f"{self.label}: worker exited ({self.proc.returncode}) without a "
                          f"result.\n{self._tail()}")

    def request(self, **command) -> dict:
        """Sends one command and returns the event that answers it."""
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return self.read()

    def wait(self) -> None:
        """Reaps the process with its own rusage (peak RSS of this worker only)."""
        if self.proc.returncode is None:
            _, status, usage = os.wait4(self.proc.pid, 0)
            self.proc.returncode = os.waitstatus_to_exitcode(status)
            self.rss_mb = usage.ru_maxrss / 1024
        self._log.close()

    def close(self) -> dict:
        """Asks the worker to quit, reaps it, and returns its `done` event."""
        try:
            done = self.request(cmd="quit")
        finally:
            self.proc.stdin.close()
            self.wait()
        return done

    def kill(self) -> None:
        """Kills the worker if it still runs (a no-op once it is reaped)."""
        if self.proc.returncode is None:
            self.proc.kill()
            self.wait()
