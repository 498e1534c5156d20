"""The PyTorch peer (`torch_dcm_ref.py`) and the phase of `benchmarks.throughput --peer` that
runs it interleaved with our DCM pair: each of our windows is compared with the peer runs around
it."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import time
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

from absl import app

from benchmarks.figures import median
from benchmarks.memory import above_import, compare_above_import, import_peak_rss_mb

if TYPE_CHECKING:
    from benchmarks.throughput import Benchmark

# mode (the peer's 5th argument) -> the precision of ours it is compared with
PEER_MODES = {"fp32": "float32", "fp32+cl": "float32", "bf16": "mixed_bfloat16",
              "bf16+cl": "mixed_bfloat16"}


@dataclasses.dataclass(frozen=True)
class PeerSettings:
    """What the peer phase takes from throughput's flags: the peer's (`--peer_*`) and the run's."""

    python: str  # --peer_python
    script: str  # --peer_script
    modes: Sequence[str]  # --peer_modes
    import_statement: str  # --peer_import
    steps: int  # --peer_steps
    rounds: int  # --peer_rounds
    net: str
    num_classes: int
    image_size: int
    batch_size: int
    bn: str  # --bn


def run_peer(python: str, script: str, depth: int, width: int, batch: int, steps: int,
             mode: str = "fp32") -> dict:
    """One run of the peer in `mode`: images/s (its own timing) and the process's peak RSS."""
    start = time.perf_counter()
    proc = subprocess.Popen([python, script, str(depth), str(width), str(batch), str(steps), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.abspath(script)), env=dict(os.environ))
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"peer ({mode}) failed ({proc.returncode}): {err.strip()[-2000:]}")
    numbers = re.findall(r"[-+]?\d+(?:\.\d+)?", out.strip().splitlines()[-1] if out.strip() else "")
    if not numbers:
        raise RuntimeError(f"could not read images/s from the peer's output: {out!r}")
    return {"mode": mode, "images_per_s": float(numbers[-1]), "rss_mb": usage.ru_maxrss / 1024,
            "cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": time.perf_counter() - start}


def best_peer_mode(modes: Dict[str, dict], precision: str) -> Optional[str]:
    """The peer's fastest mode (by median images/s) among those of `precision`."""
    candidates = [m for m in modes if PEER_MODES.get(m) == precision]
    return max(candidates, key=lambda m: modes[m]["images_per_s"], default=None)


def compare_with_peer(bench: "Benchmark", settings: PeerSettings, precisions: List[str],
                      xla_choice: Dict[str, bool]) -> Optional[dict]:
    """Our DCM pair in each of `precisions` (XLA per `xla_choice`), interleaved with the peer in
    each mode: the `peer` entry of throughput's report, or None (with a note in `bench.notes`)
    where the peer cannot run `settings.net`."""
    match = re.fullmatch(r"wrn_(\d+)_(\d+)", settings.net)
    if not match:
        bench.notes.append(f"--peer skipped: the peer only implements WRN-D-K, not {settings.net}.")
        return None
    depth, width = int(match.group(1)), int(match.group(2))
    unknown = [m for m in settings.modes if m not in PEER_MODES]
    if unknown:
        raise app.UsageError(f"Unknown --peer_modes {unknown}; valid: {', '.join(PEER_MODES)}.")
    modes = list(dict.fromkeys(settings.modes))
    comparable = settings.num_classes == 100 and settings.image_size == 32
    if not comparable:
        bench.notes.append("The peer always uses 100 classes and 32x32 inputs; this run's "
                           "configuration differs, so the peer ratios are not like for like.")
    if not os.path.isfile(settings.script):
        raise FileNotFoundError(f"No peer script at {settings.script}.")
    ours = []
    runs: Dict[str, List[dict]] = {mode: [] for mode in modes}

    def peer(mode: str, steps: int) -> dict:
        return run_peer(settings.python, settings.script, depth, width,
                        settings.batch_size, steps, mode)

    try:
        # Like the peer's process, ours then runs nothing but the training step.
        ours.extend(bench.start_workers([
            dict(config="dcm", precision=precision, xla=xla_choice[precision],
                 bn="keras" if settings.bn == "keras" else "fused", loss_cost=False)
            for precision in precisions]))
        # Runs with 0 timed steps: the CPU time of each mode's start-up and 2 warm-up steps,
        # subtracted from the other runs' to get its CPU time per timed step.
        startup = {mode: peer(mode, 0) for mode in modes}
        try:  # the peer's framework alone: its memory above import is measured from here
            peer_import_mb = import_peak_rss_mb(
                settings.python, settings.import_statement,
                cwd=os.path.dirname(os.path.abspath(settings.script)))
        except RuntimeError as error:
            peer_import_mb = None
            bench.notes.append(f"The peer's import was not measured: {error}")
        # Every round runs each peer mode once, then one window of each of ours, so every
        # window of ours has a run of every peer mode just before and just after it.
        for round_index in range(settings.rounds + 1):
            for mode in modes:
                runs[mode].append(peer(mode, settings.steps))
                bench.log(f"peer {mode} {runs[mode][-1]['images_per_s']:.1f} img/s, "
                          f"RSS {runs[mode][-1]['rss_mb']:.0f} MiB")
            if round_index == settings.rounds:
                break
            for worker in ours:
                worker.windows.append(worker.request(cmd="window", steps=settings.steps))
                bench.log(f"ours {worker.precision} {worker.windows[-1]['images_per_s']:.1f}")
        for worker in ours:
            worker.done = worker.close()
    finally:
        for worker in ours:
            worker.kill()
    per_mode = {}
    for mode in modes:
        timed_cpu = sum(r["cpu_s"] - startup[mode]["cpu_s"] for r in runs[mode])
        per_mode[mode] = {
            "precision": PEER_MODES[mode], "runs": runs[mode], "startup_run": startup[mode],
            "images_per_s": median([r["images_per_s"] for r in runs[mode]]),
            "images_per_cpu_s": (len(runs[mode]) * settings.steps * settings.batch_size
                                 / timed_cpu) if timed_cpu > 0 else None,
            "rss_mb": max(r["rss_mb"] for r in runs[mode]), "import_rss_mb": peer_import_mb,
            "rss_above_import_mb": above_import(max(r["rss_mb"] for r in runs[mode]),
                                                peer_import_mb)}
    result = {"depth": depth, "width": width, "steps": settings.steps,
              "comparable": comparable, "modes": per_mode, "ours": [],
              "peer_import": settings.import_statement}

    def paired(windows: List[dict], mode: str) -> List[float]:
        rates = [r["images_per_s"] for r in runs[mode]]
        return [w["images_per_s"] / ((rates[i] + rates[i + 1]) / 2)
                for i, w in enumerate(windows)]

    for worker in ours:
        row = bench.row(worker)
        best = best_peer_mode(per_mode, worker.precision)
        naive = "fp32" if "fp32" in per_mode else None
        row["best_peer_mode"] = best
        if best is not None:
            ratios = paired(worker.windows, best)
            row.update({"ratio_vs_peer": median(ratios), "paired_ratios": ratios,
                        "ratio_of_medians": row["images_per_s"]
                        / per_mode[best]["images_per_s"],
                        "rss_vs_peer": row["rss_mb"] / per_mode[best]["rss_mb"]
                        if row.get("rss_mb") else None,
                        "cpu_work_ratio": row["images_per_cpu_s"]
                        / per_mode[best]["images_per_cpu_s"]
                        if per_mode[best]["images_per_cpu_s"] else None})
        if naive is not None:
            row["ratio_vs_naive_peer"] = median(paired(worker.windows, naive))
        result["ours"].append(row)
    result["memory_above_import"] = compare_above_import(result)
    return result
