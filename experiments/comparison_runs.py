"""A comparison's runs: their folders, the finished ones an earlier invocation left, training.

Every run is a `python -m experiments.train` subprocess (`run_one`) with its own run folder
(`run_folder_path`); `train_all` runs up to `--jobs` of them at a time. The processes alive are
tracked so that Ctrl-C, or SIGTERM through `stop_on_sigterm`, stops every one (they resume from
their last epoch next time).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures
from typing import Dict, List, Optional, Sequence, Tuple

from experiments.comparison_config import flag_text, setting_differences
from experiments.rundir.run import completed_results, open_log

Key = Tuple[Tuple[str, ...], str, int]  # (networks, method, seed): one run of a comparison


def run_folder_path(work_dir: str, name: str, nets: Sequence[str], method: str, seed: int) -> str:
    """Directory of one run of the comparison."""
    return os.path.join(work_dir, name, "-".join(nets), f"{method}_seed{seed}")


def earlier_runs(config: dict, work_dir: str, listed: set,
                 references: Optional[Dict[tuple, dict]] = None) -> Dict[tuple, dict]:
    """Finished runs of the config's rows and methods in `work_dir` under seeds it does not list
    (`listed` holds the keys it does), made with its settings: what an invocation with other
    `--seeds` left, tabulated with this one's. Runs with other settings are left out: those that
    differ in a flag the config sets and, where this invocation has a finished run of the same
    networks and method (`references`, its results by key), those whose recorded flags differ
    from that run's in anything but the seed (a flag the config leaves at its default)."""
    reference_flags = {}
    for (nets, method, _), done in (references or {}).items():
        if isinstance(done.get("flags"), dict):
            reference_flags.setdefault((nets, method), done["flags"])
    found = {}
    for nets in config["rows"]:
        folder = os.path.join(work_dir, config["name"], "-".join(nets))
        try:
            entries = sorted(os.listdir(folder))
        except OSError:
            continue
        for entry in entries:
            match = re.fullmatch(r"(?P<method>.+)_seed(?P<seed>[1-9][0-9]*|0)", entry)
            path = os.path.join(folder, entry)
            if match is None or match["method"] not in config["methods"] or os.path.islink(path):
                continue
            key = (tuple(nets), match["method"], int(match["seed"]))
            done = None if key in listed else completed_results(path)
            if done is None or not isinstance(done.get("flags"), dict):
                continue
            reference = reference_flags.get(key[:2], {})
            wanted = {**{k: v for k, v in reference.items() if k != "seed"},
                      "method": key[1], "nets": list(nets), **config["train_flags"]}
            if not setting_differences(done, wanted):
                found[key] = done
    return found


# The training subprocesses alive now, so that an interrupted comparison can stop those started
# by its worker threads (a Ctrl-C reaches only the main thread), and a flag that it is stopping.
_live: set = set()
_live_lock = threading.Lock()
_stopping = threading.Event()


def cpu_share(concurrent: int) -> Optional[int]:
    """Threads for each of `concurrent` runs' TensorFlow op pool: this process's cores split
    evenly (at least one), or None for one run alone (TensorFlow's default, every core)."""
    if concurrent <= 1:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // concurrent)


def run_one(directory: str, train_flags: Dict[str, object], concurrent: int = 1
            ) -> Optional[dict]:
    """Runs (or resumes) one training subprocess; returns its results, or None if it failed.

    `concurrent`: how many runs may be training at the same time (`--jobs`).
    """
    argv = [sys.executable, "-m", "experiments.train", f"--model_dir={directory}"]
    argv += [f"--{k}={flag_text(v)}" for k, v in train_flags.items() if v is not None]
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo_root, env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if concurrent > 1:
        # TensorFlow otherwise reserves nearly all GPU memory for the first run, and the runs
        # started beside it fail to allocate theirs.
        env.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
        # Each run's op pool would otherwise take every core: two runs on two cores then ran
        # 20-25 % slower than with one thread each (128 Fashion-MNIST images x 60 epochs, 2-core
        # AMD EPYC, 2026-12-03). A value the user set is kept.
        env.setdefault("TF_NUM_INTRAOP_THREADS", str(cpu_share(concurrent)))
    # A link planted at train.log is refused, not followed (rundir.run.open_log).
    with open_log(directory, "train.log") as log:
        log.write(f"$ {shlex.join(argv)}\n")  # pastable: the nets hold ':' and paths spaces
        log.flush()
        with _live_lock:
            if _stopping.is_set():  # the comparison is being interrupted: start nothing new
                return None
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
            _live.add(proc)
        try:
            code = proc.wait()
        except BaseException:  # Ctrl-C in this thread: stop the run; it resumes next time
            proc.kill()
            proc.wait()
            raise
        finally:
            with _live_lock:
                _live.discard(proc)
    if code != 0:
        return None
    return completed_results(directory)


# How many of a failed run's last train.log lines compare.py prints under its FAILED line.
LOG_TAIL_LINES = 8


def _log_tail(directory: str, count: int = LOG_TAIL_LINES) -> Tuple[str, List[str]]:
    """`(the error line, the last `count` lines)` of the latest attempt in a run's train.log.

    The error line is its last `error:` or absl `FATAL` line (absl ends a flag error with a
    line pointing to --helpshort, which says nothing of what was wrong).
    """
    try:
        with open(os.path.join(directory, "train.log"), errors="replace") as f:
            lines = [line.rstrip() for line in f if line.strip()]
    except OSError:
        return "", []
    starts = [k for k, line in enumerate(lines) if line.startswith("$ ")]
    lines = lines[starts[-1] + 1:] if starts else lines  # this attempt's, not an earlier one's
    errors = [line for line in lines if line.startswith(("error:", "FATAL"))]
    return (errors or lines or [""])[-1].strip(), lines[-count:]


def error_line(label: str, done: dict) -> str:
    """`label: test error net1 x.xx%, ...`: a finished run's results in one line."""
    errors = ", ".join(f"{k} {v['test_error']['logits']:.2f}%" for k, v in done["networks"].items())
    return f"{label}: test error {errors}"


def train_all(runs: Sequence[Tuple[Key, str, Dict[str, object], str]], jobs: int
              ) -> Dict[Key, Optional[dict]]:
    """Trains `(key, directory, train_flags, label)` runs, up to `jobs` at a time.

    Returns each run's results (None if it failed) by key. Progress lines are printed as runs
    start and finish, so with `jobs` > 1 they interleave.
    """
    lock = threading.Lock()
    concurrent = min(jobs, len(runs))

    def say(*lines: str) -> None:
        with lock:  # a run's lines stay together, whole lines only
            for line in lines:
                print(line, flush=True)

    def train(directory: str, train_flags: Dict[str, object], label: str) -> Optional[dict]:
        say(f"{label}: training in {directory} ...")
        run_start = time.perf_counter()
        done = run_one(directory, train_flags, concurrent=concurrent)
        if _stopping.is_set():
            return None  # killed by the interruption; its FAILED line would only be noise
        if done is None:
            error, tail = _log_tail(directory)
            say(f"{label}: FAILED ({error}); the end of its log, "
                f"{os.path.join(directory, 'train.log')}:", *[f"    {line}" for line in tail])
        else:
            say(f"{label}: done in {time.perf_counter() - run_start:.0f}s",
                error_line(label, done))
        return done

    _stopping.clear()
    pool = futures.ThreadPoolExecutor(max_workers=jobs)
    try:
        pending = {key: pool.submit(train, directory, train_flags, label)
                   for key, directory, train_flags, label in runs}
        return {key: future.result() for key, future in pending.items()}
    except BaseException:
        # Ctrl-C, or a run that could not start: as with a single run, the queued runs are not
        # started and the running ones are stopped (they resume from their last epoch next time).
        _stopping.set()
        pool.shutdown(wait=False, cancel_futures=True)
        with _live_lock:
            for proc in _live:
                proc.kill()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def stop_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (`kill`, a job scheduler, `timeout`) stops the comparison as Ctrl-C does: it
    unwinds `train_all`, which kills the training runs it started (they resume next time);
    without it they were left running, orphaned."""
    # A second SIGTERM while the runs are being killed would cut that short and orphan them.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(f"Stopped by signal {signum}; the runs in progress stop here and resume next time.",
          file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)
