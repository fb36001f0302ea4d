"""GPU benchmark of the Triton selective scan: forward and forward+backward.

Times ``kernels.selective_scan`` against (a) the sequential reference, (b) mambapy's
parallel scan, (c) the published CUDA kernel (mamba_ssm) when it is installed, and
(d) causal attention (``F.scaled_dot_product_attention``, heads of 64 at the same width
E), and reports the scan's effective memory bandwidth against the card's peak. Also times
the one-step ``selective_state_update``. Writes ``scan_gpu.json`` and ``scan_gpu.md``.

    python -m mambaseq.bench.scan_gpu                              # full grid (tens of minutes)
    python -m mambaseq.bench.scan_gpu --batch 1 --d-inner 2048 --lengths 2048 65536 --out /tmp/b

All scans compute the same thing, the op as mambapy defines it: y = scan(u, delta, A, B, C)
+ D u with positive delta, no softplus, no gate, ungrouped B/C. Dimension names: B batch,
E d_inner, N d_state, L length.

Effective bandwidth counts only the bytes that any implementation must move once: the
forward reads u, delta, B, C and writes y; the backward also reads dy, u, delta, B, C
and writes du, ddelta, dB, dC (all in the input dtype). Comparators that would not fit
or would take too long are skipped with the reason recorded.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.testing

log = logging.getLogger("bench.scan_gpu")

# Peak HBM bandwidth in GB/s, from the vendors' data sheets.
PEAK_BANDWIDTH_GBS = {"H200": 4800.0, "H100 PCIe": 2000.0, "H100": 3350.0, "A100": 2039.0}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
HEAD_DIM = 64
DEVICE = "cuda"


def peak_bandwidth(device_name, override):
    """Peak GB/s: ``override`` if given, else looked up from the device name (None if unknown)."""
    if override is not None:
        return override
    for key in sorted(PEAK_BANDWIDTH_GBS, key=len, reverse=True):
        if all(part in device_name for part in key.split()):
            return PEAK_BANDWIDTH_GBS[key]
    return None


def time_ms(fn, grad_to_none=None):
    """Mean time of ``fn`` in ms (triton's do_bench: warm-up, L2 flushed between runs)."""
    return triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none)


def make_inputs(batch, d_inner, d_state, length, dtype, device, seed=0):
    """Scan inputs in (B, E, L) layout; A and D fp32 as the Mamba block keeps them."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def rand(*shape, dt=dtype):
        return torch.randn(*shape, generator=gen, device=device, dtype=torch.float32).to(dt)

    u = rand(batch, d_inner, length)
    delta = (torch.rand(batch, d_inner, length, generator=gen, device=device) * 0.1 + 1e-3).to(dtype)
    A = -torch.rand(d_inner, d_state, generator=gen, device=device) - 0.5
    B, C = rand(batch, d_state, length), rand(batch, d_state, length)
    D = rand(d_inner, dt=torch.float32)
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=D)


def ideal_bytes(batch, d_inner, d_state, length, element_size, backward):
    """Bytes that must cross HBM once (see the module docstring)."""
    per_channel = batch * d_inner * length * element_size       # one (B, E, L) tensor
    per_state = batch * d_state * length * element_size         # one (B, N, L) tensor
    forward = 3 * per_channel + 2 * per_state                   # u, delta, y; B, C
    if not backward:
        return forward
    return forward + 5 * per_channel + 4 * per_state            # dy, u, delta, du, ddelta; B, C, dB, dC


def estimated_bytes(name, batch, d_inner, d_state, length, element_size, backward):
    """Rough device-memory need of one call, to skip what cannot fit."""
    bel = batch * d_inner * length
    if name == "triton":
        # inputs, y, fp32 du/ddelta and their casts, checkpoints (one state per 64 steps)
        return bel * (4 * element_size + (10 + element_size) * backward) + bel * d_state * 4 // 64
    if name == "mambapy":
        # (B, L, E, N) fp32: deltaA, BX, the pscan's copy and hs; about twice with autograd
        return bel * d_state * 4 * 4 * (2 if backward else 1)
    if name == "attention":
        return bel * element_size * (4 + 6 * backward)
    if name == "reference":
        return bel * d_state * 4 * (3 if backward else 0) + bel * 4 * 4
    return bel * element_size * (4 + 6 * backward)


def scan_callables():
    """Name -> callable(inputs dict) -> y (B, E, L), for each scan implementation."""
    from mambaseq.core.scan_reference import selective_scan_ref
    from mambaseq.kernels import selective_scan

    impls = {"triton": lambda a: selective_scan(a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"]),
             "reference": lambda a: selective_scan_ref(a["u"], a["delta"], a["A"], a["B"], a["C"],
                                                        a["D"])}
    try:
        from mambapy.mamba import MambaBlock

        # mambapy wants (B, L, E) and (B, L, N); the transposes are part of its cost here.
        impls["mambapy"] = lambda a: MambaBlock.selective_scan(
            None, a["u"].transpose(1, 2), a["delta"].transpose(1, 2), a["A"],
            a["B"].transpose(1, 2), a["C"].transpose(1, 2), a["D"]).transpose(1, 2)
    except ImportError:
        log.warning("mambapy is not installed: its column stays empty (pip install mambapy)")
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        impls["mamba_ssm"] = lambda a: selective_scan_fn(a["u"], a["delta"], a["A"], a["B"],
                                                         a["C"], a["D"])
    except ImportError:
        log.warning("mamba_ssm (the published CUDA kernel) is not installed: its column stays "
                    "empty")
    return impls


def attention_callable(batch, d_inner, length, dtype, device):
    """Causal SDPA with E / 64 heads of 64 (same width as the scan); returns (fn, leaves)."""
    heads = d_inner // HEAD_DIM
    q, k, v = (torch.randn(batch, heads, length, HEAD_DIM, device=device, dtype=dtype)
               for _ in range(3))
    return (lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)), (q, k, v)


def measure(fn, leaves, backward):
    """ms for fn() (forward) or fn() then backward of a fixed upstream gradient."""
    if not backward:
        with torch.no_grad():
            return time_ms(fn)
    for leaf in leaves:
        leaf.requires_grad_(True)
    grad = torch.randn_like(fn())

    def step():
        fn().backward(grad)

    result = time_ms(step, grad_to_none=leaves)
    for leaf in leaves:
        leaf.requires_grad_(False)
        leaf.grad = None
    return result


def run_case(args, batch, d_inner, length, backward, impls, peak):
    """One row: times (ms, or a reason string) for every implementation."""
    device, dtype = DEVICE, DTYPES[args.dtype]
    elem = torch.empty(0, dtype=dtype).element_size()
    free = torch.cuda.mem_get_info()[0] * 0.9
    row = dict(batch=batch, d_inner=d_inner, d_state=args.d_state, length=length,
               mode="fwd+bwd" if backward else "fwd", dtype=args.dtype)
    limits = {"reference": args.reference_max_length, "attention": args.attention_max_length,
              "mambapy": args.mambapy_max_length}
    names = list(impls) + ["attention"]
    inputs = None
    for name in names:
        need = estimated_bytes(name, batch, d_inner, args.d_state, length, elem, backward)
        if length > limits.get(name, math.inf):
            row[name] = f"skipped (L > --{name}-max-length)"
            continue
        if need > free:
            row[name] = f"skipped (needs ~{need / 2**30:.0f} GiB)"
            continue
        try:
            if name == "attention":
                fn, leaves = attention_callable(batch, d_inner, length, dtype, device)
            else:
                if inputs is None:
                    inputs = make_inputs(batch, d_inner, args.d_state, length, dtype, device)
                leaves = [inputs[k] for k in ("u", "delta", "A", "B", "C", "D")]
                fn = (lambda impl: lambda: impl(inputs))(impls[name])
            row[name] = measure(fn, leaves, backward)
        except torch.cuda.OutOfMemoryError:
            row[name] = "out of memory"
        torch.cuda.empty_cache()
        log.info("%s %s B=%d E=%d L=%d: %s", row["mode"], name, batch, d_inner, length, row[name])
    if isinstance(row.get("triton"), float):
        moved = ideal_bytes(batch, d_inner, args.d_state, length, elem, backward)
        row["triton_gbs"] = moved / (row["triton"] * 1e-3) / 1e9
        row["triton_peak_fraction"] = row["triton_gbs"] / peak if peak else None
    return row


def step_rows(args):
    """Time of one selective_state_update (fp32 state, inputs in --dtype) per batch size."""
    from mambaseq.kernels import selective_state_update

    dtype, rows = DTYPES[args.dtype], []
    for batch in args.batch:
        for d_inner in args.d_inner:
            state = torch.zeros(batch, d_inner, args.d_state, device=DEVICE)
            x, dt, z = (torch.randn(batch, d_inner, device=DEVICE, dtype=dtype) for _ in range(3))
            Bt, Ct = (torch.randn(batch, args.d_state, device=DEVICE, dtype=dtype) for _ in range(2))
            A = -torch.rand(d_inner, args.d_state, device=DEVICE)
            D = torch.randn(d_inner, device=DEVICE)
            ms = time_ms(lambda: selective_state_update(state, x, dt, A, Bt, Ct, D, z))
            rows.append(dict(batch=batch, d_inner=d_inner, d_state=args.d_state, step_us=ms * 1e3))
    return rows


def fmt(value):
    if isinstance(value, float):
        return f"{value:.3f}"
    return "" if value is None else str(value)


def markdown(meta, rows, steps, columns):
    lines = [f"# Selective scan on {meta['device']}", "",
             f"Command: `{meta['command']}`; dtype {meta['dtype']}, d_state {meta['d_state']}; "
             f"peak bandwidth {fmt(meta['peak_gbs'])} GB/s. Times in ms (mean of "
             "triton.testing.do_bench); GB/s is the scan's effective bandwidth over the "
             "minimal bytes (see bench/scan_gpu.py).", ""]
    header = ["mode", "B", "E", "L", *columns, "triton GB/s", "% of peak"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        fraction = r.get("triton_peak_fraction")
        cells = [r["mode"], r["batch"], r["d_inner"], r["length"], *(r.get(c) for c in columns),
                 r.get("triton_gbs"), None if fraction is None else f"{100 * fraction:.0f}%"]
        lines.append("| " + " | ".join(fmt(c) for c in cells) + " |")
    lines += ["", "## One generation step (selective_state_update)", "",
              "| B | E | N | µs |", "|---|---|---|---|"]
    lines += [f"| {s['batch']} | {s['d_inner']} | {s['d_state']} | {s['step_us']:.1f} |"
              for s in steps]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--d-inner", type=int, nargs="+", default=[1536, 2048])
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--lengths", type=int, nargs="+",
                   default=[2048, 8192, 32768, 131072, 524288, 1048576])
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--reference-max-length", type=int, default=8192,
                   help="the Python-loop reference takes ~0.1 ms per step")
    p.add_argument("--mambapy-max-length", type=int, default=1 << 20)
    p.add_argument("--attention-max-length", type=int, default=262144,
                   help="causal attention is quadratic in L")
    p.add_argument("--peak-gbs", type=float, default=None,
                   help="peak memory bandwidth in GB/s (looked up from the device name if unset)")
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    return p.parse_args(argv)


def main(argv=None):
    run(parse_args(argv), "python -m mambaseq.bench.scan_gpu " + " ".join(
        sys.argv[1:] if argv is None else argv))


def run(args, command: str):
    """The benchmark of ``args`` (:func:`parse_args`'s options); ``command`` (what ran it)
    goes into the JSON's meta."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not torch.cuda.is_available():
        raise SystemExit("bench.scan_gpu needs a CUDA GPU (the Triton kernels are compiled for it)")
    device_name = torch.cuda.get_device_name()
    peak = peak_bandwidth(device_name, args.peak_gbs)
    if peak is None:
        log.warning("unknown peak bandwidth for %s: pass --peak-gbs to get %% of peak", device_name)
    impls = scan_callables()
    columns = [*impls, "attention"]
    rows = [run_case(args, batch, d_inner, length, backward, impls, peak)
            for backward in (False, True)
            for batch in args.batch for d_inner in args.d_inner for length in args.lengths]
    steps = step_rows(args)
    meta = dict(device=device_name, peak_gbs=peak, dtype=args.dtype, d_state=args.d_state,
                torch=torch.__version__, triton=triton.__version__, python=platform.python_version(),
                command=command)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scan_gpu.json").write_text(json.dumps(dict(meta=meta, scan=rows, step=steps),
                                                       indent=2))
    (args.out / "scan_gpu.md").write_text(markdown(meta, rows, steps, columns))
    log.info("wrote %s and %s", args.out / "scan_gpu.json", args.out / "scan_gpu.md")


if __name__ == "__main__":
    main()
