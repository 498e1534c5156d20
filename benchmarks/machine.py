"""What machine a benchmark ran on: CPU kind, the flags that matter for bf16, memory."""

from __future__ import annotations

import json
import os
import platform
import re
import sys

from experiments.common import light_library_module


def cpu_kind(vendor: str, cpu_flags) -> str:
    """The machine kind in words: the benchmark's numbers differ between them."""
    if "amx_bf16" in cpu_flags:
        return "Intel Xeon, Sapphire Rapids class (AMX bf16)"
    if vendor == "AuthenticAMD":
        return "AMD EPYC" + (" (avx512_bf16)" if "avx512_bf16" in cpu_flags else "")
    return {"GenuineIntel": "Intel"}.get(vendor, vendor or "unknown") + (
        " (avx512_bf16)" if "avx512_bf16" in cpu_flags else "")


def cpu_info() -> dict:
    info = {"processor": platform.processor() or platform.machine(), "cpu_flags": []}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        fields = dict(re.findall(r"^(model name|cpu family|model)\s*:\s*(.*)$", text, re.M))
        info.update({"cpu_model": fields.get("model name"), "cpu_family": fields.get("cpu family"),
                     "cpu_model_number": fields.get("model")})
        flags_line = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
        cpu_flags = set(flags_line.group(1).split()) if flags_line else set()
        vendor = re.search(r"^vendor_id\s*:\s*(.*)$", text, re.M)
        info["cpu_kind"] = cpu_kind(vendor.group(1) if vendor else "", cpu_flags)
        info["cpu_flags"] = sorted(cpu_flags & {"avx2", "avx512f", "avx512_bf16", "avx512_fp16",
                                                "avx512_vnni", "amx_bf16", "amx_tile", "fma"})
    except OSError:
        pass
    info["logical_cpus"] = os.cpu_count()
    try:
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        pass
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                                   / 2**30, 1)
    except (ValueError, OSError):  # pragma: no cover
        pass
    return info


def resolve_precision(name: str, machine: dict) -> str:
    """`name`, or for `best` / `auto` the policy `dcm_keras.precision.auto_policy` picks for
    `machine` (a `cpu_info()`, with `gpus` once the peak worker has reported them)."""
    if name not in ("best", "auto"):
        return name
    return light_library_module("precision").auto_policy(len(machine.get("gpus") or []),
                                                         machine.get("cpu_flags", []))


def refuse_existing_output(path) -> None:
    """Refuses an output file that exists, before the minutes of measuring: earlier results are
    never overwritten (`write_new_json` then creates it)."""
    if path and os.path.lexists(path):
        from absl import app

        raise app.UsageError(f"{path} exists; earlier results are never overwritten.")


def write_new_json(path: str, value) -> None:
    """Writes `value` as JSON to `path`, which must not exist."""
    with open(path, "x") as f:
        json.dump(value, f, indent=1)
