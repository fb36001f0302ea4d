"""Compile every Triton kernel of the toolkit for real GPUs, ahead of time, without a GPU.

Under TRITON_INTERPRET=1 the kernels' arithmetic is checked on the CPU, but not that they
lower to a GPU at all, nor their register use: spills and shared-memory overruns show up
only in a real compile. Triton compiles for a named target without a device, so this runs
on any Linux machine with triton installed:

    python -m mambaseq.bench.triton_aot                           # sm_80 and sm_90, everything
    python -m mambaseq.bench.triton_aot --arch sm_90 --configs default --json aot.json

For each kernel (scan forward, scan backward, one-step state update), each configuration
the launchers can choose at run time (``triton_scan.scan_configs``,
``triton_state_update.state_update_configs``; ``--configs default``: only the ones they
choose for the toolkit's default d_state), each dtype and each architecture, it plans the
launch with the launcher's own code on "meta" tensors laid out as ``core.Mamba`` passes
them (``--layout contiguous``: all contiguous), specialises it as a launch would (pointer
alignment, strides equal to 1) and compiles it. One row per compile: registers per thread,
spilled bytes and the stack frame (from the ``ptxas -v`` log of that very compile; triton
3.8 reads registers from the loaded binary only, which needs a GPU), shared memory.
Exit status 1 if any compile fails.

All optional inputs are given (D, z, delta_bias, softplus, initial state, checkpoints), the
variant with the most work; flags switched off only remove code.
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import json
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature

from mambaseq.core import Mamba
from mambaseq.kernels import triton_scan, triton_state_update

ARCHS = {"sm_80": 80, "sm_90": 90}          # A100, H100/H200
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
KERNELS = ("scan_fwd", "scan_bwd", "state_update")
LAYOUTS = ("mamba_block", "contiguous")
DEFAULT_D_STATE = inspect.signature(Mamba).parameters["d_state"].default
DEFAULT_D_INNER = 256      # a (B, E, L) example for the default configurations; any E/G % 4 == 0
BATCH, LENGTH = 2, 4096    # example sizes; a compile depends on them only through strides


@dataclass(frozen=True)
class Target:
    """One kernel configuration to compile, with shapes for which the launcher picks it."""
    kernel: str            # one of KERNELS
    d_inner: int           # E (with one B/C group)
    d_state: int           # N
    config: object         # triton_scan.ScanConfig or triton_state_update.StateUpdateConfig


def targets(which):
    """The configurations to compile: ``"all"`` the launchers can choose, or ``"default"``.

    A scan configuration covers both directions; a direction's kernel is listed once per
    distinct set of its own meta-parameters.
    """
    if which == "default":
        scan = triton_scan.scan_config(DEFAULT_D_STATE, DEFAULT_D_INNER)
        step = triton_state_update.state_update_config(DEFAULT_D_INNER, DEFAULT_D_STATE)
        return [Target("scan_fwd", DEFAULT_D_INNER, DEFAULT_D_STATE, scan),
                Target("scan_bwd", DEFAULT_D_INNER, DEFAULT_D_STATE, scan),
                Target("state_update", DEFAULT_D_INNER, DEFAULT_D_STATE, step)]
    found = {}
    for d_state, channels_per_group, config in triton_scan.scan_configs():
        for kernel, block_e in (("scan_fwd", config.block_e_fwd),
                                ("scan_bwd", config.block_e_bwd)):
            found.setdefault((kernel, block_e, config.block_n, config.chunk),
                             Target(kernel, channels_per_group, d_state, config))
    for d_inner, d_state, config in triton_state_update.state_update_configs():
        found.setdefault(("state_update", config), Target("state_update", d_inner, d_state, config))
    return list(found.values())


def _meta(*shape, dtype=torch.float32):
    return torch.empty(*shape, dtype=dtype, device="meta")


def scan_launch(kernel, d_inner, d_state, config, dtype, layout):
    """The launch plan of the forward or backward scan for one example, on meta tensors.

    ``mamba_block`` lays the inputs out as ``core.Mamba.forward`` passes them: u contiguous,
    delta and B, C transposed from (B, L, .) projections, z the second half of in_proj's
    output, dy transposed back from (B, L, E); A, D, delta_bias and states fp32.
    """
    block = layout == "mamba_block"

    def seq(width):          # (B, width, L)
        return (_meta(BATCH, LENGTH, width, dtype=dtype).transpose(1, 2) if block
                else _meta(BATCH, width, LENGTH, dtype=dtype))

    u = _meta(BATCH, d_inner, LENGTH, dtype=dtype)
    delta, dy = seq(d_inner), seq(d_inner)
    B, C = seq(d_state).unsqueeze(1), seq(d_state).unsqueeze(1)          # (B, 1, N, L)
    z = (_meta(BATCH, 2 * d_inner, LENGTH, dtype=dtype)[:, d_inner:] if block
         else _meta(BATCH, d_inner, LENGTH, dtype=dtype))
    A, state = _meta(d_inner, d_state), _meta(BATCH, d_inner, d_state)
    D, delta_bias = _meta(d_inner), _meta(d_inner)
    (y, final_state, ckpt), fwd = triton_scan.scan_fwd_launch(
        u, delta, A, B, C, D, z, delta_bias, state, True, True, config)
    if kernel == "scan_fwd":
        return fwd
    _, bwd = triton_scan.scan_bwd_launch(dy, final_state, u, delta, A, B, C, D, z, delta_bias,
                                         ckpt, True, config)
    return bwd


def state_update_launch(d_inner, d_state, config, dtype, layout):
    """The step kernel's launch plan for one example, on meta tensors.

    ``mamba_block`` as ``core.Mamba.step`` passes them: x and z halves of in_proj's output,
    B and C slices of x_proj's (dt_rank + 2N) output; the state, A, D, dt_bias fp32.
    """
    dt_rank = 4
    if layout == "mamba_block":
        x, z = _meta(BATCH, 2 * d_inner, dtype=dtype).chunk(2, dim=-1)
        proj = _meta(BATCH, dt_rank + 2 * d_state, dtype=dtype)
        B, C = proj[:, dt_rank:dt_rank + d_state], proj[:, dt_rank + d_state:]
    else:
        x, z = _meta(BATCH, d_inner, dtype=dtype), _meta(BATCH, d_inner, dtype=dtype)
        B, C = _meta(BATCH, d_state, dtype=dtype), _meta(BATCH, d_state, dtype=dtype)
    dt = _meta(BATCH, d_inner, dtype=dtype)
    _, launch = triton_state_update.state_update_launch(
        _meta(BATCH, d_inner, d_state), x, dt, _meta(d_inner, d_state), B.unsqueeze(1),
        C.unsqueeze(1), _meta(d_inner), z, _meta(d_inner), True, config)
    return launch


def plan(target, dtype, layout):
    if target.kernel == "state_update":
        return state_update_launch(target.d_inner, target.d_state, target.config, dtype, layout)
    return scan_launch(target.kernel, target.d_inner, target.d_state, target.config, dtype,
                       layout)


def parse_ptxas_log(log):
    """(registers, spill-store bytes, stack-frame bytes) from a ``ptxas -v`` log."""
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, "
                       r"(\d+) bytes spill loads", log)
    if regs is None or spills is None:
        raise RuntimeError(f"no register/spill figures in the ptxas log: {log.strip()[:200]!r}")
    return int(regs.group(1)), int(spills.group(2)), int(spills.group(1))


def compile_launch(launch, capability):
    """Compile a launch plan for ``sm_<capability>`` as ``JITFunction.run`` would on that GPU.

    Specialisation (argument types, alignment, strides equal to 1) and options come from
    triton's own binder for the target's backend; a fresh cache directory makes ptxas run
    (and log) every time. Returns (compiled kernel, ptxas log).
    """
    kernel = launch.kernel
    target = GPUTarget("cuda", capability, 32)
    backend = make_backend(target)
    # JITFunction.run adds these two options before binding (triton 3.8).
    kwargs = dict(launch.kwargs, debug=kernel.debug or knobs.runtime.debug,
                  instrumentation_mode=knobs.compilation.instrumentation_mode)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound_args, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args,
                                                              specialization, options)
    log = io.StringIO()
    with tempfile.TemporaryDirectory() as cache_dir, knobs.cache.scope(), knobs.nvidia.scope(), \
            contextlib.redirect_stdout(log):
        knobs.cache.dir = cache_dir
        knobs.nvidia.dump_ptxas_log = True     # make_cubin prints ptxas's -v log
        compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs),
                                  target=target, options=options.__dict__)
    return compiled, log.getvalue()


def meta_of(target, launch, layout):
    """The meta-parameters of a row: the config, warps and the example's shapes."""
    names = ("BLOCK_E", "BLOCK_N", "CHUNK")
    return dict({k: launch.kwargs[k] for k in (*names, "num_warps", "maxnreg")
                 if k in launch.kwargs}, d_inner=target.d_inner,
                d_state=target.d_state, layout=layout)


def compile_row(target, arch, dtype_name, layout):
    """Compile one target; returns a row (see the module docstring), never raises."""
    launch = plan(target, DTYPES[dtype_name], layout)
    row = dict(kernel=target.kernel, arch=arch, dtype=dtype_name,
               meta=meta_of(target, launch, layout),
               n_regs=None, n_spills=None, stack=None, shared=None, ok=False, error=None)
    start = time.perf_counter()
    try:
        compiled, log = compile_launch(launch, ARCHS[arch])
        row["n_regs"], row["n_spills"], row["stack"] = parse_ptxas_log(log)
        row["shared"] = compiled.metadata.shared
        row["ok"] = True
    except Exception as exc:  # noqa: BLE001 -- a failed compile is a result to report
        row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def format_row(row):
    meta = row["meta"]
    config = " ".join(f"{k}={meta[k]}" for k in ("BLOCK_E", "BLOCK_N", "CHUNK", "num_warps")
                      if k in meta)
    if not row["ok"]:
        status = f"FAILED {row['error']}"
    else:
        status = "SPILLS" if row["n_spills"] else "ok"
    figures = (f"{row['n_regs']:>4} {row['n_spills']:>6} {row['shared']:>6}" if row["ok"]
               else f"{'-':>4} {'-':>6} {'-':>6}")
    return (f"{row['kernel']:<13} {row['arch']:<6} {row['dtype']:<5} {config:<48} "
            f"{meta['layout']:<12} {figures}  {status}")


HEADER = (f"{'kernel':<13} {'arch':<6} {'dtype':<5} {'meta':<48} {'layout':<12} "
          f"{'regs':>4} {'spills':>6} {'shared':>6}  status")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", nargs="+", choices=sorted(ARCHS), default=sorted(ARCHS))
    p.add_argument("--dtype", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    p.add_argument("--kernel", nargs="+", choices=KERNELS, default=list(KERNELS))
    p.add_argument("--configs", choices=("all", "default"), default="all",
                   help="every configuration the launchers can choose, or only those they "
                        f"choose for d_state={DEFAULT_D_STATE} (default: all)")
    p.add_argument("--layout", nargs="+", choices=LAYOUTS, default=["mamba_block"],
                   help="input strides: as core.Mamba passes them, or all contiguous")
    p.add_argument("--json", type=Path, help="write the rows to this file (a JSON list)")
    args = p.parse_args(argv)
    if args.json is not None and not args.json.parent.is_dir():
        p.error(f"--json {args.json}: folder {args.json.parent} does not exist")
    return args


def main(argv=None):
    args = parse_args(argv)
    if not isinstance(triton_scan._scan_fwd_kernel, JITFunction):
        raise SystemExit("triton_aot: TRITON_INTERPRET is set, so the kernels were defined for "
                         "the interpreter; unset it to compile them for a GPU")
    rows = []
    print(HEADER, flush=True)
    for target in targets(args.configs):
        if target.kernel not in args.kernel:
            continue
        for arch in args.arch:
            for dtype_name in args.dtype:
                for layout in args.layout:
                    rows.append(compile_row(target, arch, dtype_name, layout))
                    print(format_row(rows[-1]), flush=True)
    failed = sum(not r["ok"] for r in rows)
    spilled = sum(bool(r["ok"] and r["n_spills"]) for r in rows)
    print(f"{len(rows)} compiles: {failed} failed, {spilled} spill "
          f"(triton {triton.__version__})", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
