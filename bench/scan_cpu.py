"""CPU selective-scan benchmark: the figures of the core op's issue.

    python -m bench.scan_cpu [--out DIR] [--repeats 5]

1. ratio:    B=1, E=256, N=16, L=16384 forward, our C++ kernel vs mambapy's parallel scan on
             the same inputs, in the same process (median of --repeats after a warm-up).
2. million:  L=2^20 forward at E=256, N=16, in a fresh process: time and peak RSS.
3. backward: L=65536 forward+backward at E=256, N=16, in a fresh process: time and peak RSS.

Writes scan_cpu.json (every raw timing, machine, versions) and scan_cpu.md into --out.
Cases 2 and 3 run in subprocesses so that each peak RSS is that case's own.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from bench.report import machine_info, peak_rss_gb, run_isolated, time_call, write_results
from kernels.cpu_scan import load_cpu_extension, selective_scan_cpu

E, N = 256, 16


def make_inputs(length, requires_grad=False, seed=0):
    """Mamba-like scan inputs at B=1, E=256, N=16: u, delta (1, E, L), A (E, N), B, C (1, N, L), D."""
    g = torch.Generator().manual_seed(seed)
    inputs = dict(u=torch.randn(1, E, length, generator=g),
                  delta=torch.rand(1, E, length, generator=g).mul_(0.1),
                  A=torch.rand(E, N, generator=g).add_(0.1).neg_(),
                  B=torch.randn(1, N, length, generator=g),
                  C=torch.randn(1, N, length, generator=g),
                  D=torch.randn(E, generator=g))
    for t in inputs.values():
        t.requires_grad_(requires_grad)
    return inputs


def case_ratio(repeats):
    from mambapy.mamba import MambaBlock

    length = 16384
    x = make_inputs(length)
    # mambapy wants (B, L, E) and (B, L, N); the layout change is made once, outside the timing.
    x_blk, dt_blk = x["u"].transpose(1, 2).contiguous(), x["delta"].transpose(1, 2).contiguous()
    B_blk, C_blk = x["B"].transpose(1, 2).contiguous(), x["C"].transpose(1, 2).contiguous()
    with torch.no_grad():
        ours = time_call(lambda: selective_scan_cpu(**x), repeats)
        theirs = time_call(
            lambda: MambaBlock.selective_scan(None, x_blk, dt_blk, x["A"], B_blk, C_blk, x["D"]),
            repeats)
        diff = (selective_scan_cpu(**x) - MambaBlock.selective_scan(
            None, x_blk, dt_blk, x["A"], B_blk, C_blk, x["D"]).transpose(1, 2)).abs().max()
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


def run_in_subprocess(case):
    """One of the --single cases in a fresh process, so that its peak RSS is its own."""
    return run_isolated("bench.scan_cpu", ["--single", case])


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
    parser.add_argument("--single", choices=["million", "backward"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    load_cpu_extension()
    if args.single:
        print(json.dumps({"million": case_million, "backward": case_backward}[args.single]()))
        return 0
    meta = machine_info("cpu")
    ratio = case_ratio(args.repeats)
    million, backward = run_in_subprocess("million"), run_in_subprocess("backward")
    table = markdown(meta, ratio, million, backward)
    write_results(args.out, "scan_cpu", dict(meta=meta, ratio=ratio, million=million,
                                             backward=backward), table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
