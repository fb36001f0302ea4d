"""CPU selective-scan benchmark: the figures of the core op's issue.

    python -m mambaseq.bench.scan_cpu [--out DIR] [--repeats 5]

1. ratio:    B=1, E=256, N=16, L=16384 forward, our C++ kernel vs mambapy's parallel scan on
             the same inputs, in the same process (median of --repeats after a warm-up).
2. million:  L=2^20 forward at E=256, N=16, in a fresh process: time and peak RSS.
3. backward: L=65536 forward+backward at E=256, N=16, in a fresh process: time and peak RSS.

With --vs-base CHECKOUT instead: forward and forward+backward at (B, E, L, N) = (8, 128, 1024, 16)
and (1, 256, 16384, 16) of this checkout's kernel and of CHECKOUT's (an older commit's
worktree), each in fresh processes alternating --rounds times; writes scan_vs_base.json/.md.

With --sweep instead: forward and forward+backward over d_inner 256-2048 and L = 2^10..2^20
where the inputs fit, against the sequential reference (L <= 2^12) and mambapy (while its
(B, L, E, N) tensors fit), in state updates per second; writes scan_cpu_sweep.json/.md.

Writes scan_cpu.json (every raw timing, machine, versions) and scan_cpu.md into --out.
Cases 2 and 3 run in subprocesses so that each peak RSS is that case's own.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from mambaseq.bench.report import (machine_info, machine_line, markdown_table, peak_rss_gb,
                                   run_isolated, time_call, write_results)
from mambaseq.bench.timing_worker import THIS_CHECKOUT, run_worker
from mambaseq.core.scan_reference import selective_scan_ref
from mambaseq.kernels.cpu_scan import load_cpu_extension, selective_scan_cpu

E, N = 256, 16


def make_inputs(length, requires_grad=False, seed=0, d_inner=E):
    """Mamba-like scan inputs at B=1, N=16: u, delta (1, E, L), A (E, N), B, C (1, N, L), D (E,)."""
    g = torch.Generator().manual_seed(seed)
    inputs = dict(u=torch.randn(1, d_inner, length, generator=g),
                  delta=torch.rand(1, d_inner, length, generator=g).mul_(0.1),
                  A=torch.rand(d_inner, N, generator=g).add_(0.1).neg_(),
                  B=torch.randn(1, N, length, generator=g),
                  C=torch.randn(1, N, length, generator=g),
                  D=torch.randn(d_inner, generator=g))
    for t in inputs.values():
        t.requires_grad_(requires_grad)
    return inputs


def mambapy_scan(x):
    """mambapy's parallel scan on our inputs; returns a no-argument callable giving
    y (B, E, L). The (B, L, E) layout change is made here, once, outside any timing."""
    from mambapy.mamba import MambaBlock

    x_blk, dt_blk = x["u"].transpose(1, 2).contiguous(), x["delta"].transpose(1, 2).contiguous()
    B_blk, C_blk = x["B"].transpose(1, 2).contiguous(), x["C"].transpose(1, 2).contiguous()
    return lambda: MambaBlock.selective_scan(None, x_blk, dt_blk, x["A"], B_blk, C_blk,
                                             x["D"]).transpose(1, 2)


def case_ratio(repeats):
    length = 16384
    x = make_inputs(length)
    theirs_fn = mambapy_scan(x)
    with torch.no_grad():
        ours = time_call(lambda: selective_scan_cpu(**x), repeats)
        theirs = time_call(theirs_fn, repeats)
        diff = (selective_scan_cpu(**x) - theirs_fn()).abs().max()
    updates = E * N * length
    ours_s, theirs_s = ours["median_s"], theirs["median_s"]
    return dict(case="ratio", length=length, ours_s=ours_s, mambapy_s=theirs_s,
                speedup=theirs_s / ours_s, ours_gupdates_per_s=updates / ours_s / 1e9,
                mambapy_gupdates_per_s=updates / theirs_s / 1e9, max_abs_diff=diff.item(),
                ours_raw_s=ours["raw_s"], mambapy_raw_s=theirs["raw_s"])


def case_million():
    length = 2 ** 20
    x = make_inputs(length)
    input_gb = sum(t.numel() * t.element_size() for t in x.values()) / 2 ** 30
    rss_before_gb = peak_rss_gb()
    with torch.no_grad():
        start = time.perf_counter()
        y, h = selective_scan_cpu(**x, return_final_state=True)
        seconds = time.perf_counter() - start
    peak_gb = peak_rss_gb()
    assert torch.isfinite(y.sum()) and torch.isfinite(h).all()  # sum: no (B, E, L) temporaries
    return dict(case="million", length=length, seconds=seconds, input_gb=input_gb,
                output_gb=y.numel() * y.element_size() / 2 ** 30, rss_before_scan_gb=rss_before_gb,
                peak_rss_gb=peak_gb, gupdates_per_s=E * N * length / seconds / 1e9)


def case_backward():
    length = 65536
    x = make_inputs(length, requires_grad=True)
    start = time.perf_counter()
    y = selective_scan_cpu(**x, delta_softplus=True)
    forward_s = time.perf_counter() - start
    y.sum().backward()
    total_s = time.perf_counter() - start
    states_gb = E * N * length * 4 / 2 ** 30
    assert all(torch.isfinite(t.grad).all() for t in x.values())
    return dict(case="backward", length=length, forward_s=forward_s, fwd_bwd_s=total_s,
                peak_rss_gb=peak_rss_gb(), full_state_tensor_gb=states_gb)


SWEEP_WIDTHS = (256, 1024, 2048)
SWEEP_LOG2_LENGTHS = (10, 12, 14, 16, 18, 20)
REFERENCE_MAX_LOG2 = 12      # the Python-loop reference takes tens of microseconds a step
MAMBAPY_MAX_GB = 3.0         # mambapy holds several (B, L, E, N) fp32 tensors at once
INPUTS_MAX_GB = 5.0          # u and delta, (B, E, L) fp32 each
BACKWARD_MAX_LOG2 = 16


def case_sweep(widths, log2_lengths, repeats):
    """Forward (and forward+backward up to 2^BACKWARD_MAX_LOG2) over widths x lengths, with
    the reference and mambapy where they fit; one row per (d_inner, L)."""
    rows = []
    for d_inner in widths:
        for log2 in log2_lengths:
            length = 2 ** log2
            if 2 * d_inner * length * 4 / 2 ** 30 > INPUTS_MAX_GB:
                continue
            x = make_inputs(length, d_inner=d_inner)
            reps = repeats if log2 <= 16 else 1
            row = dict(d_inner=d_inner, length=length, updates=d_inner * N * length)
            with torch.no_grad():
                row["ours_fwd"] = time_call(lambda: selective_scan_cpu(**x), reps)
                if log2 <= REFERENCE_MAX_LOG2:
                    row["reference_fwd"] = time_call(lambda: selective_scan_ref(**x), 1)
                if 4 * d_inner * length * N * 4 / 2 ** 30 <= MAMBAPY_MAX_GB:
                    row["mambapy_fwd"] = time_call(mambapy_scan(x), reps)
            if log2 <= BACKWARD_MAX_LOG2:
                leaves = {k: v.requires_grad_(True) for k, v in x.items()}
                row["ours_fwd_bwd"] = time_call(
                    lambda: selective_scan_cpu(**leaves).sum().backward(), reps)
            print(f"  sweep E={d_inner} L=2^{log2}: ours {row['ours_fwd']['median_s']:.4f} s",
                  flush=True)
            rows.append(row)
    return rows


def sweep_markdown(meta, rows):
    def rate(row, key):
        return f"{row['updates'] / row[key]['median_s'] / 1e9:.3f}" if key in row else "-"

    lines = [f"CPU selective scan sweep (B=1, N=16), {meta['cpu']} ({meta['torch_threads']} "
             f"threads), load average {meta['load_average_1_5_15'][0]:.1f}; "
             "G state-updates/s (higher is better), '-' = not run (does not fit or too slow)", "",
             "| d_inner | L | ours fwd | ours fwd+bwd | reference fwd | mambapy fwd | ours / mambapy |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        ratio = (f"{r['mambapy_fwd']['median_s'] / r['ours_fwd']['median_s']:.1f}x"
                 if "mambapy_fwd" in r else "-")
        lines.append(f"| {r['d_inner']} | 2^{r['length'].bit_length() - 1} | {rate(r, 'ours_fwd')} "
                     f"| {rate(r, 'ours_fwd_bwd')} | {rate(r, 'reference_fwd')} "
                     f"| {rate(r, 'mambapy_fwd')} | {ratio} |")
    return "\n".join(lines + [""])


VS_BASE_SHAPES = ((8, 128, 1024, 16), (1, 256, 16384, 16))


def pooled_median(results, part, clock):
    """Median over every timed call of several worker results."""
    return statistics.median(t for r in results for t in r[part][f"{clock}_s"])


def case_vs_base(base, rounds, repeats, threads):
    """Forward and forward+backward (gate, D, delta_bias, softplus) of this checkout's kernel
    and of ``base``'s, in fresh worker processes that alternate ``rounds`` times per shape;
    medians over every timed call, wall clock and process CPU time."""
    rows = []
    for shape in VS_BASE_SHAPES:
        runs = {"base": [], "ours": []}
        for _ in range(rounds):
            for side, checkout in (("base", base), ("ours", THIS_CHECKOUT)):
                runs[side].append(run_worker(checkout, "scan", "--shape", *shape,
                                             "--repeats", repeats, "--threads", threads))
        row = dict(shape=list(shape), updates=math.prod(shape), runs=runs)
        for side, results in runs.items():
            for part in ("forward", "forward_backward"):
                for clock in ("wall", "cpu"):
                    row[f"{side}_{part}_{clock}_s"] = pooled_median(results, part, clock)
        print(f"  scan {shape}: fwd+bwd base {row['base_forward_backward_wall_s']:.3f} s, "
              f"ours {row['ours_forward_backward_wall_s']:.3f} s (wall)", flush=True)
        rows.append(row)
    return rows


def vs_base_markdown(meta, base, rounds, repeats, rows):
    table = []
    for r in rows:
        for part, name in (("forward_backward", "fwd+bwd"), ("forward", "fwd")):
            cells = [" ".join(map(str, r["shape"])), name]
            for clock in ("wall", "cpu"):
                b, o = r[f"base_{part}_{clock}_s"], r[f"ours_{part}_{clock}_s"]
                cells += [f"{b * 1e3:.1f} / {o * 1e3:.1f}", f"**{b / o:.2f}x**"]
            cells.append(f"{r['updates'] / r[f'ours_{part}_wall_s'] / 1e9:.3f} vs "
                         f"{r['updates'] / r[f'base_{part}_wall_s'] / 1e9:.3f}")
            table.append(cells)
    return "\n".join([
        f"CPU scan, this checkout vs {base} (same script, same run): {rounds} alternating "
        f"worker processes per side and shape, {repeats} timed calls each after a warm-up; "
        "medians over all calls. Gate z, D, delta_bias and softplus on; the backward gets "
        "dL/dy = 1.", "",
        markdown_table(["B E L N", "pass", "wall ms base / ours", "speedup (wall)",
                        "CPU ms base / ours", "speedup (CPU)", "G state-updates/s (wall) ours vs base"],
                       table), "",
        machine_line(meta), ""])


def run_in_subprocess(case):
    """One of the --single cases in a fresh process, so that its peak RSS is its own."""
    return run_isolated("mambaseq.bench.scan_cpu", ["--single", case])


def markdown(meta, ratio, million, backward):
    return "\n".join([
        f"CPU selective scan, {meta['cpu']} ({meta['torch_threads']} threads), "
        f"torch {meta['torch']}, load average {meta['load_average_1_5_15'][0]:.1f}",
        "",
        "| case | figure |",
        "| --- | --- |",
        f"| forward B=1 E=256 N=16 L=16384: ours vs mambapy | {ratio['ours_s'] * 1e3:.1f} ms vs "
        f"{ratio['mambapy_s'] * 1e3:.0f} ms = **{ratio['speedup']:.1f}x** "
        f"({ratio['ours_gupdates_per_s']:.2f} vs {ratio['mambapy_gupdates_per_s']:.3f} G state-updates/s) |",
        f"| forward L=2^20 (E=256, N=16) | {million['seconds']:.2f} s, peak RSS "
        f"{million['peak_rss_gb']:.2f} GB (inputs {million['input_gb']:.2f} GB, output "
        f"{million['output_gb']:.2f} GB; {million['rss_before_scan_gb']:.2f} GB before the scan) |",
        f"| forward+backward L=65536 | {backward['fwd_bwd_s']:.2f} s, peak RSS "
        f"{backward['peak_rss_gb']:.2f} GB (the full state tensor would be "
        f"{backward['full_state_tensor_gb']:.2f} GB) |",
        ""])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results"),
                        help="folder for scan_cpu.json and scan_cpu.md")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")
    parser.add_argument("--sweep", action="store_true",
                        help="widths x lengths sweep vs reference and mambapy instead")
    parser.add_argument("--vs-base", type=Path, metavar="CHECKOUT",
                        help="time against the kernel of this checkout of an older commit")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating worker processes per side (--vs-base)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (--vs-base)")
    parser.add_argument("--single", choices=["million", "backward"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    load_cpu_extension()
    if args.single:
        print(json.dumps({"million": case_million, "backward": case_backward}[args.single]()))
        return 0
    if args.vs_base:
        torch.set_num_threads(args.threads)
        meta = machine_info("cpu")
        rows = case_vs_base(args.vs_base, args.rounds, args.repeats, args.threads)
        table = vs_base_markdown(meta, args.vs_base, args.rounds, args.repeats, rows)
        write_results(args.out, "scan_vs_base", dict(meta=meta, base=str(args.vs_base),
                                                     rows=rows), table)
        print(table)
        return 0
    meta = machine_info("cpu")
    if args.sweep:
        rows = case_sweep(SWEEP_WIDTHS, SWEEP_LOG2_LENGTHS, min(args.repeats, 3))
        table = sweep_markdown(meta, rows)
        write_results(args.out, "scan_cpu_sweep", dict(meta=meta, rows=rows), table)
        print(table)
        return 0
    ratio = case_ratio(args.repeats)
    million, backward = run_in_subprocess("million"), run_in_subprocess("backward")
    table = markdown(meta, ratio, million, backward)
    write_results(args.out, "scan_cpu", dict(meta=meta, ratio=ratio, million=million,
                                             backward=backward), table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
