"""Training-throughput benchmark: tokens/s of fwd+bwd, Mamba LM vs a same-size Transformer LM.

    python -m mambaseq.bench.train [--quick] [--device cpu] [--out bench/results]

For each length L (batch 1, next-token cross-entropy, forward + backward, no optimizer step),
each model runs in its own process so that its peak RSS is its own; a run that fails (out of
memory) is recorded with its error instead of a time. Reports where the tokens/s curves
cross and which model fails first.
"""
from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F

from mambaseq.bench.report import (bench_parser, machine_info, machine_line, markdown_table,
                          peak_rss_gb, run_isolated, time_call, write_results)
from mambaseq.bench.transformer import count_parameters, matched_transformer
from mambaseq.core import MambaLM

QUICK = dict(lengths=[1024, 2048, 4096], repeats=2)
FULL = dict(lengths=[1024, 2048, 4096, 8192, 16384], repeats=3)


def build(model, d_model, n_layer, vocab_size, device):
    torch.manual_seed(0)
    lm = MambaLM(vocab_size, d_model, n_layer, device=device)
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


def add_arguments(p):
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--vocab-size", type=int, default=16)
    p.add_argument("--lengths", type=int, nargs="+", default=None)
    p.add_argument("--repeats", type=int, default=None)


def main(argv=None):
    p = bench_parser(__doc__, add_arguments, single_metavar=("MODEL", "LENGTH"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.single:
        print(json.dumps(case(args.single[0], int(args.single[1]), args.d_model, args.n_layer,
                              args.vocab_size, args.repeats or 1, args.device)))
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
