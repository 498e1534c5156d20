"""A comparison's numbers: mean and spread over seeds, margins over the baseline, the table.

`summarize` makes one row per (networks, method) of the finished runs' results; `versus_baseline`
sets each method's margin against the seed spread, `verdict_lines` and `closing_lines` say it in
words, and `markdown_table` is the text of table.md.
"""

from __future__ import annotations

import statistics
from typing import Dict, List, Optional, Sequence

from experiments.comparison_config import flag_text

# The measured study every comparison's table is read against (CIFAR-10 first, then Fashion-MNIST).
ACCURACY_GUIDE = "docs/accuracy.md"


def mean_std(values: Sequence[float]) -> Dict[str, float]:
    """Mean and sample standard deviation (None for a single value: no spread is known)."""
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else None, "n": len(values)}


def final_train_accuracy(results: dict, net: str) -> Optional[float]:
    """Training accuracy (%) of a network's final classifier in the last epoch, or None.

    Keras's running mean over that epoch's (augmented) batches, as history.csv records it.
    """
    history = results.get("history") or []
    value = history[-1].get(f"{net}_logits_acc") if history else None
    try:
        return 100.0 * float(value)
    except (TypeError, ValueError):
        return None


def versus_baseline(config: dict, rows: List[dict]) -> List[dict]:
    """Each method's test-error margin over the baseline, per network, against the seed spread.

    `margin` = baseline mean error - method mean error (positive: the method is better);
    `spread` = the larger of the two sample standard deviations over seeds. A margin that does
    not exceed the spread is reported as within it: the seeds do not separate the two methods.
    With a single seed on either side there is no spread: `spread` and `exceeds_spread` are None.
    """
    out = []
    for nets in config["rows"]:
        mine = {r["method"]: r for r in rows if r["nets"] == list(nets)}
        base = mine.get("baseline")
        if base is None:
            continue
        for method, row in mine.items():
            if method == "baseline":
                continue
            nets_out = {}
            for key, err in row["test_error"].items():
                b = base["test_error"].get(key)
                if b is None:
                    continue
                margin = b["mean"] - err["mean"]
                known = b["std"] is not None and err["std"] is not None
                spread = max(b["std"], err["std"]) if known else None
                nets_out[key] = {"margin": margin, "spread": spread,
                                 "exceeds_spread": abs(margin) > spread if known else None}
            out.append({"nets": list(nets), "method": method, "networks": nets_out,
                        "time_vs_baseline": row["time_vs_baseline"]})
    return out


def verdict_lines(comparisons: List[dict]) -> List[str]:
    """One plain sentence per method: better, worse or within the seed spread, and its cost."""
    lines = []
    for c in comparisons:
        parts = []
        for key, v in c["networks"].items():
            if v["exceeds_spread"] is None:
                parts.append(f"{key} error {-v['margin']:+.2f} points (one seed: no spread to "
                             f"judge it against)")
                continue
            if not v["exceeds_spread"]:
                word = "within the seed spread"
            else:
                word = "better than baseline" if v["margin"] > 0 else "WORSE than baseline"
            parts.append(f"{key} error {-v['margin']:+.2f} points ({word}, spread "
                         f"{v['spread']:.2f})")
        x = c["time_vs_baseline"]
        cost = f"; training time x{x:.2f} of baseline" if x else ""
        lines.append(f"{c['method']} vs baseline ({' / '.join(c['nets'])}): "
                     f"{'; '.join(parts)}{cost}.")
    return lines


def closing_lines(comparisons: List[dict]) -> List[str]:
    """What the user's own table says of DCM against the baseline, in one line, and where the
    measured study is: nothing is claimed beyond these runs."""
    dcm = [v for c in comparisons if c["method"] == "dcm" for v in c["networks"].values()]
    judged = [v for v in dcm if v["exceeds_spread"] is not None]
    better = [v for v in judged if v["exceeds_spread"] and v["margin"] > 0]
    if not dcm:
        line = "This table has no DCM and baseline rows to compare."
    elif not judged:
        line = ("In these runs DCM cannot be judged against the baseline: with one seed on a "
                "side there is no seed spread (run more seeds).")
    elif better:
        line = (f"In these runs DCM's error is lower than the baseline's by more than the seed "
                f"spread for {len(better)} of {len(judged)} networks.")
    else:
        line = ("In these runs DCM's margin over the baseline does not exceed the seed spread "
                "for any network: these seeds do not separate it from the baseline.")
    return [line, f"How the margin depended on data and budget in the measured study: "
                  f"{ACCURACY_GUIDE}"]


def summarize(config: dict, results: Dict[tuple, dict]) -> List[dict]:
    """One table row per (networks, method): error mean/std per network and the time multiple."""
    rows = []
    for nets in config["rows"]:
        base = [r["epoch_train_seconds_median"] for (n, m, _), r in results.items()
                if n == tuple(nets) and m == "baseline" and r.get("epoch_train_seconds_median")]
        base_time = statistics.fmean(base) if base else None
        for method in config["methods"]:
            runs = [r for (n, m, _), r in sorted(results.items())
                    if n == tuple(nets) and m == method]
            if not runs:
                continue
            errors = {}
            for k, name in enumerate(nets):
                key = f"net{k + 1}"
                errors[key] = {"architecture": name, **mean_std(
                    [r["networks"][key]["test_error"]["logits"] for r in runs])}
                top5 = [r["networks"][key].get("top5_error") for r in runs]
                if all(t is not None for t in top5):
                    errors[key]["top5"] = mean_std(top5)
            train_acc = {}
            for k in range(len(nets)):
                values = [final_train_accuracy(r, f"net{k + 1}") for r in runs]
                if all(v is not None for v in values):
                    train_acc[f"net{k + 1}"] = mean_std(values)
            times = [r["epoch_train_seconds_median"] for r in runs
                     if r.get("epoch_train_seconds_median")]
            epoch_time = statistics.fmean(times) if times else None
            rows.append({
                "nets": list(nets), "method": method, "seeds": [r["flags"]["seed"] for r in runs],
                "test_error": errors, "train_accuracy": train_acc,
                "epoch_train_seconds": epoch_time,
                "time_vs_baseline": epoch_time / base_time if epoch_time and base_time else None,
                # None when a run's history.csv was incomplete (its results.json says so).
                "wall_time_s": (statistics.fmean(r["wall_time_s"] for r in runs)
                                if all(r.get("wall_time_s") is not None for r in runs)
                                else None),
            })
    return rows


def _mean_std_text(e: Dict[str, float]) -> str:
    """`mean ± std`, or `mean (1 seed)` when there is no spread."""
    return f"{e['mean']:.2f} (1 seed)" if e["std"] is None else f"{e['mean']:.2f} ± {e['std']:.2f}"


def markdown_table(config: dict, rows: List[dict], notes: Sequence[str] = ()) -> str:
    """The summary as a markdown table (error in %, mean +/- sample std over seeds).

    `notes`: sentences appended to the footnote (how the times were measured, missing runs).
    """
    width = max(len(nets) for nets in config["rows"])
    head = ["networks", "method"] + [f"net{k + 1} error (%)" for k in range(width)]
    head += ["train acc (%)", "train s/epoch", "time x baseline", "runs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [" / ".join(row["nets"]), row["method"]]
        for k in range(width):
            e = row["test_error"].get(f"net{k + 1}")
            cells.append(_mean_std_text(e) if e else "")
        acc = [a["mean"] for a in row.get("train_accuracy", {}).values()]
        cells.append(f"{statistics.fmean(acc):.1f}" if acc else "")
        t, x = row["epoch_train_seconds"], row["time_vs_baseline"]
        cells += [f"{t:.1f}" if t else "", f"{x:.2f}" if x else "", str(len(row["seeds"]))]
        lines.append("| " + " | ".join(cells) + " |")
    flags_text = ", ".join(f"{k}={flag_text(v)}" for k, v in config["train_flags"].items())
    seeds = sorted({s for row in rows for s in row["seeds"]}) or config["seeds"]
    lines += ["", f"Test error of each network's final classifier, mean ± sample std over seeds "
                  f"{', '.join(map(str, seeds))}; train acc = final-epoch training accuracy "
                  f"(augmented batches), mean over networks and seeds; time = median training "
                  f"time of an epoch (the first, which also traces the graphs, left out when "
                  f"there are more) relative to baseline. Settings: {flags_text}."
                  + "".join(f" {note}" for note in notes)]
    verdicts = verdict_lines(versus_baseline(config, rows))
    if verdicts:
        lines += ["", "Margin over baseline (negative = lower error) against the seed spread "
                      "(the larger sample std of the two):", ""]
        lines += [f"- {v}" for v in verdicts]
    return "\n".join(lines) + "\n"
