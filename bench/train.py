"""Training-throughput benchmark: tokens/s of fwd+bwd, Mamba LM vs a same-size Transformer LM.

    python -m mambaseq.bench.train [--quick] [--device cpu] [--out bench/results]
    python -m mambaseq.bench.train --step --vs-base CHECKOUT [--rounds 3] [--repeats 5]

For each length L (batch 1, next-token cross-entropy, forward + backward, no optimizer step),
each model runs in its own process so that its peak RSS is its own; a run that fails (out of
memory) is recorded with its error instead of a time. Reports where the tokens/s curves
cross and which model fails first.

With --step: full training steps (AdamW, next-token cross-entropy) of MambaLM D=64, 2 layers,
batch 8, 1,024 tokens, in fresh worker processes that alternate --rounds times: this checkout,
the checkout CHECKOUT of an older commit, mambapy's Mamba layers in the same LM shell, and a
Transformer of the same size; then one torch.profiler step each of CHECKOUT and this checkout,
split by op. Writes train_step.json/.md.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from mambaseq.bench.report import (bench_parser, machine_info, machine_line, markdown_table,
                          peak_rss_gb, run_isolated, time_call, write_results)
from mambaseq.bench.timing_worker import THIS_CHECKOUT, run_worker
from mambaseq.bench.transformer import count_parameters, matched_transformer
from mambaseq.core import MambaLM, MambaLMConfig

QUICK = dict(lengths=[1024, 2048, 4096], repeats=2)
FULL = dict(lengths=[1024, 2048, 4096, 8192, 16384], repeats=3)


def build(model, d_model, n_layer, vocab_size, device):
    torch.manual_seed(0)
    lm = MambaLM(MambaLMConfig(vocab_size=vocab_size, d_model=d_model, n_layer=n_layer),
                 device=device)
    return lm if model == "mamba" else matched_transformer(lm, device=device)


def case(model, length, d_model, n_layer, vocab_size, repeats, device):
    """One (model, length) measurement in this process; returns a JSON-ready dict."""
    net = build(model, d_model, n_layer, vocab_size, device)
    ids = torch.randint(0, vocab_size, (1, length + 1), device=device)

    def fwd_bwd():
        logits = net(ids[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        net.zero_grad(set_to_none=True)
    try:
        timing = time_call(fwd_bwd, repeats, device=device)
    except (RuntimeError, MemoryError) as e:  # torch.OutOfMemoryError is a RuntimeError
        return dict(model=model, length=length, error=f"{type(e).__name__}: {str(e)[:200]}")
    peak = (torch.cuda.max_memory_allocated() / 2 ** 30 if device == "cuda" else peak_rss_gb())
    return dict(model=model, length=length, params=count_parameters(net),
                tokens_per_s=length / timing["median_s"], peak_memory_gb=peak,
                peak_memory_kind="cuda max_memory_allocated" if device == "cuda" else "peak RSS",
                **timing)


def crossover(rows):
    """First length where the Transformer's tokens/s falls below Mamba's (None if never)."""
    by = {}
    for r in rows:
        by.setdefault(r["length"], {})[r["model"]] = r.get("tokens_per_s")
    for length in sorted(by):
        m, t = by[length].get("mamba"), by[length].get("transformer")
        if m and (t is None or m > t):
            return length
    return None


def markdown(result):
    by = {}
    for r in result["rows"]:
        by.setdefault(r["length"], {})[r["model"]] = r
    table = []
    for length in sorted(by):
        m, t = by[length].get("mamba", {}), by[length].get("transformer", {})
        ratio = (m["tokens_per_s"] / t["tokens_per_s"]
                 if m.get("tokens_per_s") and t.get("tokens_per_s") else None)
        table.append([length, m.get("tokens_per_s", m.get("error", "-")),
                      t.get("tokens_per_s", t.get("error", "-")),
                      f"{ratio:.2f}x" if ratio else "-",
                      m.get("peak_memory_gb"), t.get("peak_memory_gb")])
    cfg = result["models"]
    return "\n".join([
        f"### Training fwd+bwd throughput (batch 1, {result['device']})", "",
        f"MambaLM D={cfg['d_model']} {cfg['n_layer']} layers ({cfg['mamba_params']:,} params) vs "
        f"a Transformer of {cfg['transformer_params']:,} params; median of {result['repeats']}.",
        "", markdown_table(["L", "Mamba tok/s", "Transformer tok/s", "Mamba / Transformer",
                            "Mamba peak GB", "Transformer peak GB"], table), "",
        f"Curves cross at L = {result['crossover'] or 'none of the measured lengths'}; "
        f"first failure: {result['first_failure'] or 'none within the measured lengths'}.", "",
        machine_line(result["meta"]), ""])


def run(args):
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    rows = []
    for length in args.lengths:
        for model in ("mamba", "transformer"):
            cmd = ["--single", model, length, "--d-model", args.d_model, "--n-layer", args.n_layer,
                   "--vocab-size", args.vocab_size, "--repeats", args.repeats,
                   "--device", args.device, "--threads", args.threads or 0]
            try:
                r = run_isolated("mambaseq.bench.train", cmd)
            except RuntimeError as e:
                r = dict(model=model, length=length, error=str(e)[-300:])
            print(f"  train L={length} {model}: "
                  + (f"{r['tokens_per_s']:.0f} tok/s, peak {r['peak_memory_gb']:.2f} GB"
                     if "tokens_per_s" in r else r["error"]), flush=True)
            rows.append(r)
    failures = [r for r in rows if "error" in r]
    net = build("mamba", args.d_model, args.n_layer, args.vocab_size, "cpu")
    tf = matched_transformer(net)
    result = dict(device=args.device, repeats=args.repeats, rows=rows,
                  models=dict(d_model=args.d_model, n_layer=args.n_layer,
                              mamba_params=count_parameters(net),
                              transformer_params=count_parameters(tf),
                              transformer_layers=tf.config.n_layer),
                  crossover=crossover(rows),
                  first_failure=(f"{failures[0]['model']} at L={failures[0]['length']}"
                                 if failures else None),
                  meta=machine_info(args.device))
    md = markdown(result)
    write_results(args.out, "train", result, md)
    print(md)
    return result


STEP = dict(d_model=64, n_layer=2, batch=8, length=1024)


def case_step(base, rounds, repeats, threads):
    """Training-step seconds of each model (fresh worker processes, alternating ``rounds``
    times) and the op split of one profiled step of ``base`` and of this checkout."""
    sides = (("mamba, base", base, "mamba"), ("mamba", THIS_CHECKOUT, "mamba"),
             ("mambapy", THIS_CHECKOUT, "mambapy"), ("transformer", THIS_CHECKOUT, "transformer"))
    size = ["--d-model", STEP["d_model"], "--n-layer", STEP["n_layer"], "--batch", STEP["batch"],
            "--length", STEP["length"], "--threads", threads]
    runs = {name: [] for name, _, _ in sides}
    for _ in range(rounds):
        for name, checkout, model in sides:
            runs[name].append(run_worker(checkout, "train", "--model", model,
                                         "--repeats", repeats, *size))
    rows = []
    for name, results in runs.items():
        row = dict(model=name, params=results[0]["params"], runs=results)
        for clock in ("wall", "cpu"):
            row[f"{clock}_s"] = statistics.median(t for r in results for t in r[f"{clock}_s"])
        row["tokens_per_s"] = STEP["batch"] * STEP["length"] / row["wall_s"]
        print(f"  step {name}: {row['wall_s']:.3f} s wall, {row['cpu_s']:.3f} s CPU", flush=True)
        rows.append(row)
    profiles = {name: run_worker(checkout, "train", "--model", "mamba", "--repeats", 1,
                                 "--profile", *size)["profile_self_s"]
                for name, checkout in (("base", base), ("ours", THIS_CHECKOUT))}
    return rows, profiles


PROFILE_GROUPS = (("scan backward", lambda op: ("SelectiveScan" in op and "Backward" in op)
                   or op == "mambaseq::cpu_scan_bwd"),     # the custom op since issue 15
                  ("scan forward", lambda op: "SelectiveScan" in op or op == "mambaseq::cpu_scan_fwd"),
                  ("matmul (mm, bmm, addmm)", lambda op: op in ("aten::mm", "aten::bmm", "aten::addmm")),
                  ("copy_ (layout copies)", lambda op: op == "aten::copy_"),
                  ("cat", lambda op: op == "aten::cat"),
                  ("conv1d and its backward", lambda op: "convolution" in op),
                  ("everything else", lambda op: True))


def profile_split(profile):
    """Self seconds per PROFILE_GROUPS group (each op in the first group it matches)."""
    split = {name: 0.0 for name, _ in PROFILE_GROUPS}
    for op, seconds in profile.items():
        group = next(name for name, match in PROFILE_GROUPS if match(op))
        split[group] += seconds
    return split


def step_markdown(meta, base, rounds, repeats, rows, profiles):
    by = {r["model"]: r for r in rows}
    ours = by["mamba"]
    table = [[r["model"], f"{r['params']:,}", f"{r['wall_s']:.3f}", f"{r['cpu_s']:.3f}",
              f"{r['tokens_per_s']:.0f}", f"{r['wall_s'] / ours['wall_s']:.2f}x",
              f"{r['cpu_s'] / ours['cpu_s']:.2f}x"] for r in rows]
    splits = {side: profile_split(p) for side, p in profiles.items()}
    totals = {side: sum(split.values()) for side, split in splits.items()}
    split_rows = [[name] + [f"{splits[side][name]:.3f} s ({100 * splits[side][name] / totals[side]:.0f}%)"
                            for side in ("base", "ours")] for name, _ in PROFILE_GROUPS]
    split_rows.append(["total (self CPU)", f"{totals['base']:.3f} s", f"{totals['ours']:.3f} s"])
    return "\n".join([
        f"### Training step, MambaLM D={STEP['d_model']} {STEP['n_layer']} layers, batch "
        f"{STEP['batch']} x {STEP['length']} tokens, AdamW ({meta['torch_threads']} thread)", "",
        f"Base: {base}. {rounds} alternating worker processes per model, {repeats} timed steps "
        "each after a warm-up; medians over all steps. 'x ours' = that model's step time over "
        "this checkout's Mamba step time (above 1: slower than ours).", "",
        markdown_table(["model", "params", "step s (wall)", "step s (CPU)", "tokens/s (wall)",
                        "x ours (wall)", "x ours (CPU)"], table), "",
        "Where one step's time goes (torch.profiler self CPU time, one profiled step each):", "",
        markdown_table(["op group", "base", "this checkout"], split_rows), "",
        machine_line(meta), ""])


def run_step(args):
    base = Path(args.vs_base)
    rows, profiles = case_step(base, args.rounds, args.repeats or 5, args.threads)
    meta = machine_info("cpu")
    md = step_markdown(meta, base, args.rounds, args.repeats or 5, rows, profiles)
    write_results(args.out, "train_step", dict(meta=meta, base=str(base), step=STEP, rows=rows,
                                              profiles=profiles), md)
    print(md)


def add_arguments(p):
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--vocab-size", type=int, default=16)
    p.add_argument("--lengths", type=int, nargs="+", default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--step", action="store_true",
                   help="training-step comparison against --vs-base (see the module doc)")
    p.add_argument("--vs-base", type=Path, metavar="CHECKOUT",
                   help="checkout of the older commit that --step compares with")
    p.add_argument("--rounds", type=int, default=3, help="alternating processes per model (--step)")


def main(argv=None):
    p = bench_parser(__doc__, add_arguments, single_metavar=("MODEL", "LENGTH"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.step:
        if args.vs_base is None:
            p.error("--step needs --vs-base CHECKOUT (a worktree of the commit to compare with)")
        run_step(args)
        return 0
    if args.single:
        print(json.dumps(case(args.single[0], int(args.single[1]), args.d_model, args.n_layer,
                              args.vocab_size, args.repeats or 1, args.device)))
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
