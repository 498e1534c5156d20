r"""The PyTorch peer's DCM step broken into the buckets of `benchmarks.profile_step`.

Runs in the peer's own virtual environment (torch, no TensorFlow), on the peer's own networks:

    /tmp/peer-venv/bin/python benchmarks/peer_profile.py --mode=fp32+cl --steps=3

It imports `torch_dcm_ref.py` (`--peer_script`) for its WRN-with-heads module and repeats its
step (both networks, 6 cross-entropy terms, 18 KL terms, SGD with momentum and weight decay)
under `torch.profiler`, then sums each op's self CPU time into the same buckets as our profile.
PyTorch runs one op at a time on the calling thread (each op using every core), so the bucket
times add up to the step's time, less Python and dispatch.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import time

BUCKETS = ("conv forward", "conv backward", "batch norm", "dense", "elementwise (networks)",
           "layout and casts", "optimizer update", "loss, metrics, weight decay", "input")


def bucket(op: str) -> str:
    """The bucket of one aten op (by name)."""
    if "convolution_backward" in op:
        return "conv backward"
    if "convolution" in op or "conv2d" in op:
        return "conv forward"
    if "batch_norm" in op:
        return "batch norm"
    if op in ("aten::addmm", "aten::mm", "aten::linear", "aten::matmul"):
        return "dense"
    if "_foreach" in op or op.startswith("Optimizer"):
        return "optimizer update"
    if op in ("aten::copy_", "aten::to", "aten::_to_copy", "aten::contiguous", "aten::clone"):
        return "layout and casts"
    if any(k in op for k in ("softmax", "kl_div", "nll_loss", "cross_entropy", "sum", "mean")):
        return "loss, metrics, weight decay"
    return "elementwise (networks)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                  "shared", "peer", "torch_dcm_ref.py")
    parser.add_argument("--peer_script", default=default_script)
    parser.add_argument("--mode", default="fp32+cl", choices=["fp32", "fp32+cl", "bf16", "bf16+cl"])
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--width", type=float, default=2)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--output_json")
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    spec = importlib.util.spec_from_file_location("torch_dcm_ref", args.peer_script)
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    torch.manual_seed(0)
    nets = [peer.WRNWithHeads(args.depth, args.width, 100) for _ in range(2)]
    x, y = torch.randn(args.batch, 3, 32, 32), torch.randint(0, 100, (args.batch,))
    if "+cl" in args.mode:
        nets = [n.to(memory_format=torch.channels_last) for n in nets]
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD([p for n in nets for p in n.parameters()], 0.1, momentum=0.9,
                          weight_decay=5e-4)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.mode.startswith("bf16"))

    def step():  # the peer's step, as torch_dcm_ref.main defines it
        with autocast:
            a, b = nets[0](x), nets[1](x)
            a, b = [o.float() for o in a], [o.float() for o in b]
        loss = sum(F.cross_entropy(o, y) for o in a + b)
        for src, dst in ((a, b), (b, a)):
            for oi in dst:
                for oj in src:
                    loss = loss + F.kl_div(F.log_softmax(oi, 1), F.log_softmax(oj.detach(), 1),
                                           reduction="batchmean", log_target=True)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        wall = time.perf_counter() - start
    totals = collections.defaultdict(float)
    for event in prof.key_averages():
        totals[bucket(event.key)] += event.self_cpu_time_total / 1e3 / args.steps  # ms/step
    op_total = sum(totals.values())
    result = {"mode": args.mode, "step_ms": wall * 1e3 / args.steps,
              "buckets_ms": {b: totals.get(b, 0.0) for b in BUCKETS},
              "shares": {b: totals.get(b, 0.0) / op_total for b in BUCKETS},
              "images_per_s": args.batch * args.steps / wall}
    print(f"Peer {args.mode}, WRN-{args.depth}-{args.width:g} pair, batch {args.batch}: "
          f"{result['step_ms']:.0f} ms/step (profiled)")
    for b in BUCKETS:
        print(f"| {b} | {result['buckets_ms'][b]:.0f} ({100 * result['shares'][b]:.1f}%) |")
    if args.output_json:
        with open(args.output_json, "x") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
