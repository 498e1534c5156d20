"""The markdown of `benchmarks.throughput`, written from its JSON report alone (the flags the run
used are in the report's `flags`), one function per table."""

from __future__ import annotations

import statistics
from types import SimpleNamespace
from typing import List, Optional

from benchmarks.figures import fmt, median, mfu_peak
from benchmarks.memory import compare_above_import
from benchmarks.peer import best_peer_mode


def markdown(report: dict) -> str:
    """Every table of `report` (throughput's result, `markdown` aside), with the machine first."""
    flags = SimpleNamespace(**report["flags"])
    m, rows = report["machine"], report["results"]
    lines = [
        f"Machine: {m.get('cpu_model') or m.get('processor')} (family {m.get('cpu_family')} "
        f"model {m.get('cpu_model_number')}), {m.get('usable_cpus')} usable CPUs, "
        f"{m.get('memory_gib')} GiB; GPUs: {', '.join(m.get('gpus') or []) or 'none'}; "
        f"TensorFlow {m.get('tensorflow')} (oneDNN {_on_off(m.get('onednn_enabled'))}), "
        f"Keras {m.get('keras')}; {report['date']}.",
        f"Net {flags.net}, {flags.num_classes} classes, {flags.image_size}x{flags.image_size}"
        f"x3, batch {flags.batch_size}; median of {flags.windows} windows x "
        f"{flags.steps_per_window} steps after {flags.warmup} warm-up steps. Matmul peak "
        "(GFLOP/s): " + ", ".join(f"{k} {v:.0f}" for k, v in report["peak_gflops"].items()) + ".",
    ]
    lines += _rows_table(rows) + _batch_norm_table(rows)
    if report["distillation"]:
        lines += _distillation_table(report["distillation"])
    if report["data"] is not None:
        lines += _data_lines(report["data"], rows)
    if report["peer"] is not None:
        lines += _peer_markdown(report["peer"], report)
    if report["accuracy"]:
        lines += _accuracy_table(report["accuracy"], flags)
    if report["notes"]:
        lines += [""] + [f"Note: {n}" for n in report["notes"]]
    return "\n".join(lines)


def _rows_table(rows: List[dict]) -> List[str]:
    lines = []
    if rows:
        lines += ["",
                  "| config | what | precision | XLA | images/s | min-max | ms/step "
                  "| images/CPU-s | GFLOP/img | MFU | peak RSS MiB |",
                  "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        memory = fmt(r["rss_mb"], ".0f")
        if r.get("gpu_peak_mb") is not None:
            memory += f" (GPU {r['gpu_peak_mb']:.0f})"
        lines.append(
            f"| {r['config']} | {r['what']} | {r['precision']} | {'on' if r['xla'] else 'off'} "
            f"| {r['images_per_s']:.1f} | {r['images_per_s_min']:.0f}-"
            f"{r['images_per_s_max']:.0f} | {r['step_ms']:.0f} | {r['images_per_cpu_s']:.1f} "
            f"| {r['gflop_per_image']:.2f} "
            f"| {fmt(r['mfu'] and 100 * r['mfu'], '.0f', '%')} | {memory} |")
    return lines


def _batch_norm_table(rows: List[dict]) -> List[str]:
    """The fused BN rows against the Keras BN rows of the same configuration (`--bn=both`)."""
    keras_rows = {(r["config"], r["precision"], r["xla"]): r for r in rows
                  if r.get("bn") == "keras"}
    pairs = [(r, keras_rows[(r["config"], r["precision"], r["xla"])]) for r in rows
             if r.get("bn") == "fused" and (r["config"], r["precision"], r["xla"]) in keras_rows]
    if not pairs:
        return []
    lines = ["", "Fused BatchNormalization (the library's) against Keras's own BN layer, "
                 "same rounds:", "",
             "| config | precision | XLA | images/s fused / Keras | median of paired "
             "windows | images/CPU-s fused / Keras | peak RSS MiB fused / Keras |",
             "|---|---|---|---:|---:|---:|---:|"]
    for fused, plain in pairs:
        paired = median([f / k for f, k in zip(fused["windows"], plain["windows"])])
        lines.append(
            f"| {fused['config']} | {fused['precision']} | {'on' if fused['xla'] else 'off'} "
            f"| {fused['images_per_s']:.1f} / {plain['images_per_s']:.1f} "
            f"({fused['images_per_s'] / plain['images_per_s']:.2f}x) | {paired:.2f}x "
            f"| {fused['images_per_cpu_s']:.1f} / {plain['images_per_cpu_s']:.1f} "
            f"({fused['images_per_cpu_s'] / plain['images_per_cpu_s']:.2f}x) "
            f"| {fmt(fused['rss_mb'], '.0f')} / {fmt(plain['rss_mb'], '.0f')} |")
    return lines


def _distillation_table(distillation: List[dict]) -> List[str]:
    lines = ["", "Cost of the distillation machinery (DCM pair vs the same pair with heads "
                 "trained with cross-entropy only):", "",
             "| precision | XLA | DCM step vs CE-only step | loss+metrics graph (DCM) "
             "| share of DCM step | KD part (DCM - CE-only graph) |",
             "|---|---|---:|---:|---:|---:|"]
    for d in distillation:
        lines.append(
            f"| {d['precision']} | {'on' if d['xla'] else 'off'} "
            f"| {fmt(d['dcm_vs_ce_step_time'] and 100 * d['dcm_vs_ce_step_time'], '+.1f', '%')} "
            f"| {fmt(d['dcm_loss_graph_ms'], '.1f', ' ms')} "
            f"| {fmt(d['dcm_loss_graph_share'] and 100 * d['dcm_loss_graph_share'], '.2f', '%')} "
            f"| {fmt(d['kd_share'] and 100 * d['kd_share'], '.2f', '%')} |")
    return lines


def _data_lines(data: dict, rows: List[dict]) -> List[str]:
    lines = ["", "Input pipeline (`dcm_keras.data`, standalone):", ""]
    if "error" in data:
        lines.append(f"- not measured: {data['error']}")
        return lines
    best_dcm = max((r["images_per_s"] for r in rows if r["config"] == "dcm"), default=None)
    for key in ("synthetic", "real"):
        entry = data.get(key)
        if not entry:
            continue
        if "error" in entry:
            lines.append(f"- {key}: not measured ({entry['error']})")
            continue
        ratio = (f", {entry['images_per_s'] / best_dcm:.1f}x the fastest DCM pair "
                 "training above" if best_dcm else "")
        lines.append(f"- {entry['what']}: {entry['images_per_s']:.0f} images/s{ratio}")
    return lines


def _accuracy_table(accuracy: List[dict], flags: SimpleNamespace) -> List[str]:
    first = accuracy[0]
    lines = ["", f"Accuracy check: DCM pair ({flags.net}, dense), "
                 f"{first['dataset']}, {first['examples']} training examples x "
                 f"{first['epochs']} epochs (SGD {flags.accuracy_lr} decaying "
                 "linearly to 0), full test split. Same seed (initial weights, data "
                 "order, augmentation) in every precision; float32 again from another "
                 "seed shows how much accuracy moves with the seed alone:", "",
             "| precision | seed | net1 test acc | net2 test acc | mean | test loss "
             "| train loss |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for a in accuracy:
        t = a["test"]
        accs = [t.get("net1_logits_acc"), t.get("net2_logits_acc")]
        mean = statistics.mean([v for v in accs if v is not None] or [0.0])
        lines.append(f"| {a['precision']} | {a['seed']} "
                     f"| {fmt(accs[0] and 100 * accs[0], '.2f', '%')} "
                     f"| {fmt(accs[1] and 100 * accs[1], '.2f', '%')} "
                     f"| {100 * mean:.2f}% | {t['loss']:.4f} "
                     f"| {a['final_train_loss']:.4f} |")
    return lines


def _peer_markdown(p: dict, report: dict) -> List[str]:
    """The peer phase's table (`p`, the report's `peer`) and its memory lines."""
    flags, machine = SimpleNamespace(**report["flags"]), report["machine"]
    modes = p["modes"]
    lines = ["", f"PyTorch peer (torch_dcm_ref.py {p['depth']} {p['width']} "
                 f"{flags.batch_size} {p['steps']} MODE), interleaved with our DCM pair: "
                 f"{flags.peer_rounds} rounds of (every peer mode, every one of ours) and a "
                 f"last peer round; windows of {p['steps']} steps. CPU: "
                 f"{machine.get('cpu_kind')}; AMX {_has(machine, 'amx_bf16')}, "
                 f"AVX512-BF16 {_has(machine, 'avx512_bf16')}.", "",
             "| | mode / precision | XLA | images/s (median) | vs best peer mode of the "
             "precision (paired median) | ratio of medians | vs peer fp32 NCHW (naive) "
             "| images/CPU-s | MFU | peak RSS MiB | above import MiB |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for mode, m in modes.items():
        best = best_peer_mode(modes, m["precision"]) == mode
        peak = mfu_peak(report["peak_gflops"], m["precision"])
        flops = next((r["gflop_per_image"] for r in p["ours"]), None)
        mfu = flops * m["images_per_s"] / peak if flops and peak else None
        lines.append(f"| peer | {mode}{' (best)' if best else ''} | - | "
                     f"{m['images_per_s']:.1f} | {'1.00' if best else '-'} | - | - "
                     f"| {fmt(m.get('images_per_cpu_s'))} "
                     f"| {fmt(mfu and 100 * mfu, '.0f', '%')} | {m['rss_mb']:.0f} "
                     f"| {fmt(m.get('rss_above_import_mb'), '.0f')} |")
    for r in p["ours"]:
        lines.append(
            f"| ours | {r['precision']} | {'on' if r['xla'] else 'off'} "
            f"| {r['images_per_s']:.1f} | {fmt(r.get('ratio_vs_peer'), '.2f')} "
            f"(vs {r.get('best_peer_mode') or '-'}) "
            f"| {fmt(r.get('ratio_of_medians'), '.2f')} "
            f"| {fmt(r.get('ratio_vs_naive_peer'), '.2f')} | {r['images_per_cpu_s']:.1f} "
            f"| {fmt(r['mfu'] and 100 * r['mfu'], '.0f', '%')} | {fmt(r['rss_mb'], '.0f')} "
            f"| {fmt(r.get('rss_above_import_mb'), '.0f')} |")
    lines += [""] + memory_lines(p)
    lines += ["", "images/CPU-s: images per second of CPU time the process used (all "
                  "threads), a measure of work that load from other processes barely "
                  "moves; the peer's excludes its start-up and warm-up (a 0-step run). "
                  "MFU against the higher of the matmul peaks of the precision's dtype and of "
                  "float32 (a CPU that emulates bf16 has a bf16 peak far below float32's)."]
    return lines


def memory_lines(peer: dict) -> List[str]:
    """Peak RSS above the framework's import, ours against the peer's best mode, per precision."""
    ours_import = next((r.get("import_rss_mb") for r in peer["ours"]), None)
    peer_import = next((m.get("import_rss_mb") for m in peer["modes"].values()), None)
    lines = [f"Peak RSS above the framework's import (ours: TensorFlow+Keras, "
             f"{fmt(ours_import, '.0f')} MiB; peer: `{peer.get('peer_import', 'import torch')}`, "
             f"{fmt(peer_import, '.0f')} MiB):"]
    for e in peer.get("memory_above_import") or compare_above_import(peer):
        verdict = {True: "**ours exceeds the peer's**", False: "ours does not exceed the peer's",
                   None: "not compared"}[e["ours_exceeds_peer"]]
        lines.append(f"- {e['precision']}: ours {fmt(e['ours_mb'], '.0f')} MiB, peer "
                     f"({e['peer_mode'] or '-'}) {fmt(e['peer_mb'], '.0f')} MiB: {verdict}.")
    return lines


def _has(machine: dict, flag: str) -> str:
    return "yes" if flag in machine.get("cpu_flags", []) else "no"


def _on_off(value: Optional[bool]) -> str:
    return {True: "on", False: "off"}.get(value, "unknown")
