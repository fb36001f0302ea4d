"""The one command to run the day a GPU is lent: kernel numerics, timings, a 2^20 step; one JSON.

    python -m mambaseq.bench.gpu_check                 # estimated 3-4 minutes on an H100/H200
    python -m mambaseq.bench.gpu_check --out /tmp/gpu_check.json --skip-timings

1. numerics: every Triton kernel against ``core.selective_scan_ref`` on the GPU, fp32 and
   bf16, over shapes that reach each kind of configuration the launchers choose (d_state
   5 to 256, E/G divisible by 4, by 2 only, odd; grouped B/C; lengths that end mid-chunk):
   forward y, final state, the gradient of every input, two chunks passing state == one
   call, and ``selective_state_update`` step by step against the reference step and the
   scan. Error = max |triton - reference| / max |reference| per tensor; tolerances as in
   tests/kernels/test_triton_scan.py (fp32 1e-4, bf16 2e-2).
2. timings (bf16, B=1, E=2048, N=16, L 2k-64k): the scan forward and forward+backward
   against the reference loop (to 2k), mambapy, mamba_ssm if installed, and causal
   attention (``scaled_dot_product_attention``, which runs torch's flash-attention kernel
   where it can); the one-step kernel. These are ``bench.scan_gpu``'s measurements on a
   reduced grid.
3. one training step (forward, backward, AdamW) of a 2-layer MambaLM (d_model 128) on one
   2^20-token sequence under bf16 autocast: seconds per step and peak memory.

Exit status 1 if a numerics check fails; everything measured is in the JSON either way.
Dimension names: B batch, E d_inner, N d_state, G groups, L length.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2}
# (batch, d_inner, d_state, length, groups): which configuration each reaches
# (triton_scan.scan_config: BLOCK_E fwd/bwd, CHUNK).
SCAN_CASES = [
    (2, 64, 16, 300, 1),     # the default: BLOCK_E 4/2, CHUNK 64; 5 chunks, the last partial
    (1, 66, 16, 130, 1),     # E/G even, not divisible by 4: BLOCK_E 2/2
    (1, 65, 5, 77, 1),       # E/G odd: BLOCK_E 1/1; N=5 padded to 8
    (2, 48, 16, 100, 3),     # three B/C groups of 16 channels
    (1, 64, 64, 200, 1),     # CHUNK 32
    (1, 32, 256, 50, 1),     # the largest state: CHUNK 8, BLOCK_E 2/1
]
# (batch, d_inner, d_state, groups) of the one-step kernel: BLOCK_E 16, 8; a block
# spanning two groups; the largest state.
STEP_CASES = [(2, 64, 16, 1), (3, 8, 5, 2), (1, 24, 16, 3), (2, 32, 256, 1)]
STEPS = 8


def relative_error(actual, expected):
    """max |actual - expected| / max |expected| (0 for empty tensors)."""
    if expected.numel() == 0:
        return 0.0
    scale = max(expected.abs().max().item(), 1e-6)
    return (actual.float() - expected.float()).abs().max().item() / scale


def scan_inputs(batch, d_inner, d_state, length, groups, dtype, device, seed=0):
    """Every argument of the scan, as leaves requiring grad: grouped (B, G, N, L) B/C, D,
    z, delta_bias, an initial state; A, D, delta_bias and the state fp32 as in core.Mamba."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def rand(*shape, dt=dtype, scale=1.0, offset=0.0):
        x = torch.randn(*shape, generator=gen, device=device) * scale + offset
        return x.to(dt).requires_grad_()

    bc = (batch, groups, d_state, length)
    return dict(u=rand(batch, d_inner, length), delta=rand(batch, d_inner, length, scale=0.5),
                A=(-torch.rand(d_inner, d_state, generator=gen, device=device) - 0.5)
                .requires_grad_(),
                B=rand(*bc), C=rand(*bc), D=rand(d_inner, dt=torch.float32),
                z=rand(batch, d_inner, length),
                delta_bias=rand(d_inner, dt=torch.float32, scale=0.3),
                initial_state=rand(batch, d_inner, d_state, dt=torch.float32))


def check_scan_case(case, dtype_name, device, scan, reference):
    """One shape and dtype: rows of (what, error, tolerance, ok) for y, the final state,
    every gradient and chunked-vs-whole."""
    batch, d_inner, d_state, length, groups = case
    args = scan_inputs(batch, d_inner, d_state, length, groups, DTYPES[dtype_name], device)
    y, h = scan(**args, delta_softplus=True, return_final_state=True)
    y_ref, h_ref = reference(**args, delta_softplus=True, return_final_state=True)
    gen = torch.Generator(device=device).manual_seed(1)
    dy = torch.randn(y.shape, generator=gen, device=device)
    dh = torch.randn(h.shape, generator=gen, device=device)
    leaves = list(args.values())
    grads, grads_ref = (torch.autograd.grad((out.float() * dy).sum() + (state * dh).sum(),
                                            leaves)
                        for out, state in ((y, h), (y_ref, h_ref)))
    errors = {"y": relative_error(y, y_ref), "final_state": relative_error(h, h_ref)}
    errors.update({f"d{name}": relative_error(g, g_ref)
                   for name, g, g_ref in zip(args, grads, grads_ref)})
    # Two calls passing the state == one call.
    cut = length // 2
    first = {k: (v[..., :cut] if v.dim() >= 3 and k != "initial_state" else v)
             for k, v in args.items()}
    rest = {k: (v[..., cut:] if v.dim() >= 3 and k != "initial_state" else v)
            for k, v in args.items()}
    y1, h1 = scan(**first, delta_softplus=True, return_final_state=True)
    y2, h2 = scan(**dict(rest, initial_state=h1), delta_softplus=True, return_final_state=True)
    errors["chunked_y"] = relative_error(torch.cat([y1, y2], -1).detach(), y.detach())
    errors["chunked_state"] = relative_error(h2.detach(), h.detach())
    tol = TOLERANCE[dtype_name]
    shape = dict(batch=batch, d_inner=d_inner, d_state=d_state, length=length, groups=groups)
    return [dict(kernel="scan", dtype=dtype_name, **shape, what=what, error=err, tol=tol,
                 ok=bool(err <= tol)) for what, err in errors.items()]


def check_step_case(case, dtype_name, device, step, step_ref, reference):
    """STEPS one-step updates from a random state against the reference step (y, state) and
    against the reference scan over the same steps."""
    batch, d_inner, d_state, groups = case
    dtype, tol = DTYPES[dtype_name], TOLERANCE[dtype_name]
    gen = torch.Generator(device=device).manual_seed(2)

    def rand(*shape, dt=dtype):
        return torch.randn(*shape, generator=gen, device=device).to(dt)

    u, dt, z = (rand(batch, d_inner, STEPS) for _ in range(3))
    Bm, Cm = (rand(batch, groups, d_state, STEPS) for _ in range(2))
    A = -torch.rand(d_inner, d_state, generator=gen, device=device) - 0.5
    D, dt_bias = rand(d_inner, dt=torch.float32), rand(d_inner, dt=torch.float32)
    h0 = rand(batch, d_inner, d_state, dt=torch.float32)
    state, state_ref = h0.clone(), h0.clone()
    err_y = err_state = 0.0
    ys = []
    for t in range(STEPS):
        kwargs = dict(x=u[..., t], dt=dt[..., t], A=A, B=Bm[..., t], C=Cm[..., t], D=D,
                      z=z[..., t], dt_bias=dt_bias, dt_softplus=True)
        ys.append(step(state, **kwargs))
        y_ref = step_ref(state_ref, **kwargs)
        err_y = max(err_y, relative_error(ys[-1], y_ref))
        err_state = max(err_state, relative_error(state, state_ref))
    y_scan, h_scan = reference(u, dt, A, Bm, Cm, D=D, z=z, delta_bias=dt_bias,
                               delta_softplus=True, initial_state=h0, return_final_state=True)
    errors = {"y": err_y, "state": err_state,
              "steps_vs_scan_y": relative_error(torch.stack(ys, -1), y_scan),
              "steps_vs_scan_state": relative_error(state, h_scan)}
    shape = dict(batch=batch, d_inner=d_inner, d_state=d_state, groups=groups)
    return [dict(kernel="state_update", dtype=dtype_name, **shape, what=what, error=err,
                 tol=tol, ok=bool(err <= tol)) for what, err in errors.items()]


def numerics(device, dtype_names=tuple(DTYPES), scan_cases=SCAN_CASES, step_cases=STEP_CASES):
    """All numerics rows (see the module docstring) for the kernels on ``device``."""
    from mambaseq.core.scan_reference import selective_scan_ref
    from mambaseq.core.state_update import selective_state_update_ref
    from mambaseq.kernels.triton_scan import selective_scan
    from mambaseq.kernels.triton_state_update import selective_state_update

    rows = []
    for dtype_name in dtype_names:
        for case in scan_cases:
            rows += check_scan_case(case, dtype_name, device, selective_scan, selective_scan_ref)
        for case in step_cases:
            rows += check_step_case(case, dtype_name, device, selective_state_update,
                                    selective_state_update_ref, selective_scan_ref)
    return rows


def timings(lengths, d_inner):
    """bench.scan_gpu's rows for B=1, N=16, bf16 at ``lengths``, and its one-step rows."""
    from mambaseq.bench import scan_gpu

    args = scan_gpu.parse_args(["--batch", "1", "--d-inner", str(d_inner), "--dtype", "bf16",
                                "--lengths", *map(str, lengths),
                                "--reference-max-length", "2048"])
    peak = scan_gpu.peak_bandwidth(torch.cuda.get_device_name(), None)
    impls = scan_gpu.scan_callables()
    rows = [scan_gpu.run_case(args, 1, d_inner, length, backward, impls, peak)
            for backward in (False, True) for length in lengths]
    return dict(scan=rows, step=scan_gpu.step_rows(args), peak_gbs=peak)


def train_step(log2_length, repeats=2):
    """Seconds per training step of a 2-layer MambaLM on one 2^log2_length-token sequence."""
    from mambaseq.core import MambaLM, MambaLMConfig

    torch.manual_seed(0)
    length = 1 << log2_length
    model = MambaLM(MambaLMConfig(vocab_size=16, d_model=128, n_layer=2)).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 16, (1, length + 1), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    start = time.perf_counter()
    first_loss = step()                        # includes the kernels' compiles
    first_s = time.perf_counter() - start
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    start = time.perf_counter()
    losses = [step() for _ in range(repeats)]
    seconds = (time.perf_counter() - start) / repeats
    return dict(tokens=length, d_model=128, n_layer=2, vocab_size=16, autocast="bf16",
                first_step_s=first_s, step_s=seconds, tokens_per_s=length / seconds,
                peak_memory_gb=torch.cuda.max_memory_allocated() / 1e9,
                losses=[first_loss, *losses], finite=all(map(math.isfinite, [first_loss, *losses])))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench/results/gpu_check.json"),
                   help="the JSON to write (default: bench/results/gpu_check.json)")
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 32768, 65536],
                   help="sequence lengths of the timings")
    p.add_argument("--d-inner", type=int, default=2048, help="E of the timings")
    p.add_argument("--train-log2-length", type=int, default=20,
                   help="log2 of the training step's sequence length")
    p.add_argument("--skip-timings", action="store_true")
    p.add_argument("--skip-train", action="store_true")
    args = p.parse_args(argv)
    if not args.out.parent.is_dir():
        p.error(f"--out {args.out}: folder {args.out.parent} does not exist")
    if min(args.lengths) < 1 or args.d_inner < 64 or args.d_inner % 64:
        p.error(f"--lengths must be >= 1 and --d-inner a multiple of 64 (attention heads of "
                f"64), got {args.lengths} and {args.d_inner}")
    if not 10 <= args.train_log2_length <= 24:
        p.error(f"--train-log2-length must be in 10..24, got {args.train_log2_length}")
    return args


def refusal():
    """Why this machine cannot run the check (None when it can)."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return "gpu_check: TRITON_INTERPRET is set; unset it so that the kernels are compiled"
    if not torch.cuda.is_available():
        return ("gpu_check: no CUDA GPU is visible (torch.cuda.is_available() is False); "
                "run it on a machine with an NVIDIA GPU")
    return None


def main(argv=None):
    args = parse_args(argv)
    reason = refusal()
    if reason is not None:
        print(reason, file=sys.stderr)
        return 1
    import triton

    started = time.perf_counter()
    result = dict(meta=dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                            triton=triton.__version__, cuda=torch.version.cuda,
                            python=platform.python_version(),
                            command="python -m mambaseq.bench.gpu_check " + " ".join(
                                sys.argv[1:] if argv is None else argv)))

    def save():
        result["meta"]["seconds"] = round(time.perf_counter() - started, 1)
        args.out.write_text(json.dumps(result, indent=1) + "\n")

    section = time.perf_counter()
    rows = numerics("cuda")
    failed = [r for r in rows if not r["ok"]]
    result.update(numerics=rows, numerics_ok=not failed,
                  numerics_s=round(time.perf_counter() - section, 1))
    print(f"numerics: {len(rows) - len(failed)}/{len(rows)} within tolerance", flush=True)
    for r in failed:
        print(f"  FAILED {r['kernel']} {r['dtype']} {r['what']}: error {r['error']:.3g} > "
              f"{r['tol']} (B={r['batch']} E={r['d_inner']} N={r['d_state']})", flush=True)
    save()
    if not args.skip_timings:
        section = time.perf_counter()
        result["timings"] = timings(args.lengths, args.d_inner)
        result["timings_s"] = round(time.perf_counter() - section, 1)
        save()
    if not args.skip_train:
        result["train_step"] = train_step(args.train_log2_length)
        print(f"train step at 2^{args.train_log2_length}: "
              f"{result['train_step']['step_s']:.2f} s", flush=True)
    save()
    print(f"wrote {args.out} ({result['meta']['seconds']} s)", flush=True)
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
