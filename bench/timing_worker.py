"""Timing worker run in a subprocess, one measurement per process, by bench.scan_cpu --vs-base
and bench.train --step: it imports the toolkit under either layout, so that one benchmark
run times an older commit (top-level ``core``/``kernels``, before c6272ea; put its checkout
on PYTHONPATH) beside this one (``mambaseq.*``) with the same script and the same care.

    python bench/timing_worker.py scan  --layout top-level  --shape 8 128 1024 16 --repeats 5
    python bench/timing_worker.py train --layout mambaseq --model mamba --repeats 5 [--profile]

Prints one JSON object: wall and CPU (process) seconds of every timed call after one warm-up,
and with --profile the self CPU time of each op in one profiled training step. It imports
nothing from this checkout but what the layout names, so it is run by path.

Dimension names: B batch, E d_inner, L length, N d_state, D d_model.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


THIS_CHECKOUT = Path(__file__).resolve().parent.parent


def layout_of(checkout):
    """'mambaseq' for a checkout with the namespace package, else 'top-level' (before c6272ea)."""
    return "mambaseq" if (Path(checkout) / "mambaseq" / "__init__.py").is_file() else "top-level"


def run_worker(checkout, what, *args):
    """Run this worker on ``checkout``'s code in a fresh process; its JSON result.

    Raises:
        RuntimeError: the worker failed; the message holds its last stderr lines.
    """
    env = dict(os.environ, PYTHONPATH=str(checkout))
    cmd = [sys.executable, str(Path(__file__).resolve()), what, "--layout", layout_of(checkout),
           *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"timing worker on {checkout} ({what} {' '.join(map(str, args))}) "
                           f"failed (exit {proc.returncode}): {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def toolkit(layout, name):
    """``core``/``kernels`` module ``name`` under the given layout."""
    return importlib.import_module(name if layout == "top-level" else f"mambaseq.{name}")


def timed(fn, repeats):
    """One warm-up call, then wall and CPU seconds of each of ``repeats`` calls."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)
    return dict(wall_s=wall, cpu_s=cpu, wall_median_s=statistics.median(wall),
                cpu_median_s=statistics.median(cpu))


def scan_inputs(batch, d_inner, length, d_state, seed=0):
    """Mamba-like scan inputs with gradients: u, delta, z (B, E, L), A (E, N), B, C (B, N, L)."""
    g = torch.Generator().manual_seed(seed)
    x = dict(u=torch.randn(batch, d_inner, length, generator=g),
             delta=torch.randn(batch, d_inner, length, generator=g).mul_(0.5),
             A=torch.rand(d_inner, d_state, generator=g).add_(0.1).neg_(),
             B=torch.randn(batch, d_state, length, generator=g),
             C=torch.randn(batch, d_state, length, generator=g),
             D=torch.randn(d_inner, generator=g), z=torch.randn(batch, d_inner, length, generator=g),
             delta_bias=torch.randn(d_inner, generator=g).mul_(0.5))
    return {k: v.requires_grad_(True) for k, v in x.items()}


def time_scan(layout, shape, repeats):
    scan = toolkit(layout, "kernels.cpu_scan").selective_scan_cpu
    x = scan_inputs(*shape)

    def forward():
        with torch.no_grad():
            scan(**x, delta_softplus=True)

    def forward_backward():
        y = scan(**x, delta_softplus=True)
        y.backward(torch.ones_like(y))

    return dict(forward=timed(forward, repeats), forward_backward=timed(forward_backward, repeats))


class MambapyLM(nn.Module):
    """mambapy's Mamba layers as a language model shaped like MambaLM (embedding, layers,
    final RMSNorm, tied head); mambapy.lm needs einops, which the toolkit does not."""

    def __init__(self, vocab_size, d_model, n_layer):
        super().__init__()
        from mambapy.mamba import Mamba, MambaConfig, RMSNorm
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.layers = Mamba(MambaConfig(d_model=d_model, n_layers=n_layer))
        self.norm = RMSNorm(d_model)

    def forward(self, ids):
        return F.linear(self.norm(self.layers(self.embedding(ids))), self.embedding.weight)


def build_model(layout, model, vocab_size, d_model, n_layer):
    torch.manual_seed(0)
    if model == "mambapy":
        return MambapyLM(vocab_size, d_model, n_layer)
    core = toolkit(layout, "core")
    sizes = dict(vocab_size=vocab_size, d_model=d_model, n_layer=n_layer)
    # built from a keyword-only config since the configs redesign; by arguments before it
    if "config" in inspect.signature(core.MambaLM.__init__).parameters:
        lm = core.MambaLM(core.MambaLMConfig(**sizes))
    else:
        lm = core.MambaLM(**sizes)
    if model == "transformer":
        from mambaseq.bench.transformer import matched_transformer
        return matched_transformer(lm)
    return lm


def training_step(net, batch, length, vocab_size):
    """A closure doing one AdamW step of next-token cross-entropy on a fixed random batch."""
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    ids = torch.randint(0, vocab_size, (batch, length + 1), generator=torch.Generator().manual_seed(1))

    def step():
        logits = net(ids[:, :-1])
        F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def op_split(step):
    """Self CPU seconds per op name of one profiled step, largest first."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return {e.key: e.self_cpu_time_total / 1e6 for e in rows if e.self_cpu_time_total > 0}


def time_train(layout, model, vocab_size, d_model, n_layer, batch, length, repeats, profile):
    net = build_model(layout, model, vocab_size, d_model, n_layer)
    step = training_step(net, batch, length, vocab_size)
    out = dict(timed(step, repeats), params=sum(p.numel() for p in net.parameters()))
    if profile:
        out["profile_self_s"] = op_split(step)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["scan", "train"])
    p.add_argument("--layout", choices=["mambaseq", "top-level"], required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--shape", type=int, nargs=4, metavar=("B", "E", "L", "N"))
    p.add_argument("--model", choices=["mamba", "mambapy", "transformer"], default="mamba")
    p.add_argument("--vocab-size", type=int, default=16)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.what == "scan":
        if args.shape is None:
            p.error("scan needs --shape B E L N")
        result = time_scan(args.layout, args.shape, args.repeats)
    else:
        result = time_train(args.layout, args.model, args.vocab_size, args.d_model, args.n_layer,
                            args.batch, args.length, args.repeats, args.profile)
    print(json.dumps(dict(result, threads=torch.get_num_threads())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
