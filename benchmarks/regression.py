r"""The float32 regression check of the DCM step: run it before and after touching the step.

    python -m benchmarks.regression --output=benchmarks/results/regression_before.json
    # ... change the step ...
    python -m benchmarks.regression --output=benchmarks/results/regression_after.json \
        --baseline=benchmarks/results/regression_before.json

It is `benchmarks.throughput --peer` restricted to what issue 22's goal 2 is about: our float32 DCM
pair (`--precisions=float32`, XLA off) interleaved with the PyTorch peer's float32 modes
(`--peer_modes=fp32,fp32+cl`; ours is compared with the faster), no standalone table
(`--configs=`). Every flag of `benchmarks.throughput` applies and can override these defaults
(`--peer_rounds`, `--peer_steps`, `--net`, `--batch_size`, `--peer_python`, ...).

Then it checks the targets and prints one line each:

- ours / peer: the median of our windows each divided by the mean of the peer runs just before and
  after it (throughput's paired ratio), against `--min_ratio` (default 1.0);
- MFU of our float32 step against the float32 matmul peak measured in the same run, against
  `--min_mfu` (default 0.80);
- peak RSS above the framework's import, ours and the peer's (reported; a target with
  `--check_memory`);
- with `--baseline` (an earlier output of this script, or of `benchmarks.throughput --peer`): the
  change of the paired ratio, MFU, images/s and images/CPU-s. The paired ratio falling by more than
  `--max_ratio_drop` fails, but only against a baseline from the same machine kind, net and batch
  (other baselines are reported, not checked: absolute rates differ between kinds).

The whole report (throughput's, plus the checks) goes to `--output`, which must not exist. The exit
status is 1 when a target fails, with one line per failed target on stderr naming the machine kind
(`benchmarks.machine.cpu_kind`). Needs an idle machine, like every benchmark.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import List, Optional

from absl import app, flags

from benchmarks import throughput
from benchmarks.figures import mfu_peak
from benchmarks.machine import refuse_existing_output, write_new_json
from benchmarks.memory import compare_above_import

FLAGS = flags.FLAGS

# throughput's flags whose defaults this check changes (the command line still overrides them)
DEFAULTS = {"configs": [], "precisions": ["float32"], "xla": "off", "peer": True,
            "peer_modes": ["fp32", "fp32+cl"], "peer_xla": "off"}


def float32_row(report: dict) -> Optional[dict]:
    """Our float32 DCM row of the peer phase, or None."""
    peer = report.get("peer") or {}
    return next((r for r in peer.get("ours", []) if r.get("precision") == "float32"), None)


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def _x(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3f}x"


def peer_mfu(report: dict, row: dict) -> Optional[float]:
    """MFU of the peer's best float32 mode: same FLOPs per image as ours, same peak."""
    mode = (report["peer"]["modes"] or {}).get(row.get("best_peer_mode") or "")
    peak = mfu_peak(report.get("peak_gflops") or {}, "float32")
    if not mode or not peak or not row.get("gflop_per_image"):
        return None
    return row["gflop_per_image"] * mode["images_per_s"] / peak


def comparable(report: dict, baseline: dict) -> List[str]:
    """Why the baseline's figures cannot be checked against this run's (empty: they can)."""
    reasons = []
    kinds = [(r.get("machine") or {}).get("cpu_kind") for r in (baseline, report)]
    if kinds[0] != kinds[1]:
        reasons.append(f"machine kind {kinds[0]} then {kinds[1]}")
    for name in ("net", "batch_size", "num_classes", "image_size"):
        values = [(r.get("flags") or {}).get(name) for r in (baseline, report)]
        if values[0] != values[1]:
            reasons.append(f"{name} {values[0]} then {values[1]}")
    return reasons


def check(report: dict, min_ratio: float = 1.0, min_mfu: float = 0.80,
          baseline: Optional[dict] = None, max_ratio_drop: Optional[float] = 0.05,
          check_memory: bool = False) -> dict:
    """The targets of a `benchmarks.throughput --peer` report.

    Returns {"cpu_kind", "lines" (what to print), "failures" (one line per failed target, naming
    the machine kind), "values", "baseline"}.
    """
    kind = (report.get("machine") or {}).get("cpu_kind") or "unknown machine kind"
    lines, failures, values = [], [], {}

    def fail(what: str) -> None:
        failures.append(f"FAILED on {kind}: {what}")

    row = float32_row(report)
    lines.append(f"Regression check of the float32 DCM step against the peer's best float32 "
                 f"mode, on {kind} ({report.get('date', 'undated')}):")
    if row is None:
        fail("no float32 comparison with the peer in this run (was the peer phase skipped?)")
        return {"cpu_kind": kind, "lines": lines, "failures": failures, "values": values,
                "baseline": None}
    ratio, mfu, mode = row.get("ratio_vs_peer"), row.get("mfu"), row.get("best_peer_mode")
    values.update({"ratio_vs_peer": ratio, "mfu": mfu, "best_peer_mode": mode,
                   "images_per_s": row.get("images_per_s"),
                   "images_per_cpu_s": row.get("images_per_cpu_s"),
                   "paired_ratios": row.get("paired_ratios"),
                   "peer_mfu": peer_mfu(report, row)})

    ok = ratio is not None and ratio >= min_ratio
    lines.append(f"- ours / peer ({mode or 'no peer mode'}), median of paired windows: "
                 f"{_x(ratio)} (target >= {min_ratio:.2f}x): {'pass' if ok else 'FAIL'}")
    if not ok:
        fail(f"float32 ours / peer {_x(ratio)} < {min_ratio:.2f}x (paired median against "
             f"{mode or 'no peer mode'})")
    ok = mfu is not None and mfu >= min_mfu
    lines.append(f"- MFU of our float32 step: {_pct(mfu)} (peer {_pct(values['peer_mfu'])}; "
                 f"target >= {100 * min_mfu:.0f} %): {'pass' if ok else 'FAIL'}")
    if not ok:
        fail(f"float32 MFU {_pct(mfu)} < {100 * min_mfu:.0f} %")

    memory = report["peer"].get("memory_above_import") or compare_above_import(report["peer"])
    values["memory_above_import"] = memory
    for entry in memory:
        exceeds = entry["ours_exceeds_peer"]
        verdict = {True: "ours exceeds the peer's", False: "ours does not exceed the peer's",
                   None: "not compared"}[exceeds]
        mib = lambda v: "-" if v is None else f"{v:.0f} MiB"  # noqa: E731
        lines.append(f"- peak RSS above the framework's import, {entry['precision']}: ours "
                     f"{mib(entry['ours_mb'])}, peer ({entry['peer_mode'] or '-'}) "
                     f"{mib(entry['peer_mb'])}: {verdict}"
                     + (" (FAIL)" if check_memory and exceeds is not False else ""))
        if check_memory and exceeds is not False:
            fail(f"{entry['precision']} peak RSS above import: ours {mib(entry['ours_mb'])}, "
                 f"peer {mib(entry['peer_mb'])}" + ("" if exceeds else " (not measured)"))

    before = None
    if baseline is not None:
        old = float32_row(baseline)
        reasons = comparable(report, baseline)
        before = {"date": baseline.get("date"), "cpu_kind": (baseline.get("machine") or {})
                  .get("cpu_kind"), "not_comparable": reasons}
        if old is None:
            lines.append("- baseline: it has no float32 comparison with the peer; nothing to "
                         "compare.")
        else:
            lines.append(f"- against the baseline of {before['date']} on {before['cpu_kind']}"
                         + (f" (not comparable: {'; '.join(reasons)})" if reasons else "") + ":")
            for key, label, fmt in (("ratio_vs_peer", "ours / peer", _x), ("mfu", "MFU", _pct),
                                    ("images_per_s", "images/s", lambda v: f"{v:.1f}"),
                                    ("images_per_cpu_s", "images/CPU-s", lambda v: f"{v:.1f}")):
                a, b = old.get(key), row.get(key)
                change = b / a - 1 if a and b is not None else None
                before[key] = {"before": a, "after": b, "change": change}
                lines.append(f"  {label}: {'-' if a is None else fmt(a)} -> "
                             f"{'-' if b is None else fmt(b)}"
                             + ("" if change is None else f" ({100 * change:+.1f} %)"))
            change = before["ratio_vs_peer"]["change"]
            if max_ratio_drop is not None and change is not None and not reasons \
                    and change < -max_ratio_drop:
                fail(f"float32 ours / peer fell {100 * -change:.1f} % against the baseline of "
                     f"{before['date']} ({_x(before['ratio_vs_peer']['before'])} -> "
                     f"{_x(ratio)}; allowed {100 * max_ratio_drop:.1f} %)")
    lines.append("Result: " + ("all targets met." if not failures
                               else f"{len(failures)} target(s) failed."))
    return {"cpu_kind": kind, "lines": lines, "failures": failures, "values": values,
            "baseline": before, "targets": {"min_ratio": min_ratio, "min_mfu": min_mfu,
                                            "max_ratio_drop": max_ratio_drop,
                                            "check_memory": check_memory}}


def load_baseline(path: str) -> dict:
    """An earlier result, refused before measuring if it cannot serve as a baseline."""
    try:
        with open(path) as f:
            baseline = json.load(f)
    except (OSError, ValueError) as error:
        raise app.UsageError(f"--baseline={path}: {error}")
    if not isinstance(baseline, dict) or float32_row(baseline) is None:
        raise app.UsageError(f"--baseline={path} has no float32 comparison with the peer (an "
                             "output of benchmarks.regression or benchmarks.throughput --peer).")
    return baseline


def main(argv: List[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if FLAGS.output_json:
        raise app.UsageError("Use --output (--output_json is benchmarks.throughput's).")
    if not FLAGS.peer:
        raise app.UsageError("The regression check compares with the peer: --peer is required.")
    if not re.fullmatch(r"wrn_\d+_\d+", FLAGS.net):
        raise app.UsageError(f"--net={FLAGS.net}: the peer only implements WRN-D-K (wrn_D_K).")
    refuse_existing_output(FLAGS.output)
    baseline = load_baseline(FLAGS.baseline) if FLAGS.baseline else None
    if not os.path.isfile(FLAGS.peer_script):
        raise app.UsageError(f"No peer script at {FLAGS.peer_script} (--peer_script).")
    if not os.path.isfile(FLAGS.peer_python):
        raise app.UsageError(f"No peer Python at {FLAGS.peer_python} (--peer_python; set-up in "
                             "../shared/peer/README.md).")
    report = throughput.Benchmark().run()
    print(report["markdown"], flush=True)
    result = check(report, FLAGS.min_ratio, FLAGS.min_mfu, baseline,
                   FLAGS.max_ratio_drop if FLAGS.max_ratio_drop >= 0 else None,
                   FLAGS.check_memory)
    if FLAGS.baseline:
        result["baseline_path"] = FLAGS.baseline
    print("\n" + "\n".join(result["lines"]), flush=True)
    if FLAGS.output:
        write_new_json(FLAGS.output, {**report, "command": " ".join(sys.argv),
                                      "regression": result})
    if result["failures"]:
        print("\n".join(result["failures"]), file=sys.stderr, flush=True)
        sys.exit(1)


def _define_flags() -> None:
    """Only when run as a script: the test process imports several benchmark modules."""
    flags.DEFINE_string("output", None, "Write the report and the checks as JSON here "
                        "(never overwritten).")
    flags.DEFINE_string("baseline", None, "An earlier output of this script (or of "
                        "benchmarks.throughput --peer) to report the before/after change against.")
    flags.DEFINE_float("min_ratio", 1.0, "Target: float32 ours / the peer's best float32 mode "
                       "(median of paired windows).", lower_bound=0.0)
    flags.DEFINE_float("min_mfu", 0.80, "Target: MFU of our float32 step, a fraction of the "
                       "float32 matmul peak.", lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_float("max_ratio_drop", 0.05, "Fail when ours / peer falls by more than this "
                       "fraction against --baseline (same machine kind, net and batch only; "
                       "negative: report only).")
    flags.DEFINE_bool("check_memory", False, "Also fail where our peak RSS above TensorFlow+"
                      "Keras's import exceeds the peer's above torch's (reported either way).")
    for name, value in DEFAULTS.items():
        FLAGS.set_default(name, value)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
