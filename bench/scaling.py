"""Scaling benchmark: time and peak memory of a 4-layer backbone forward vs length, log-log.

    python -m mambaseq.bench.scaling [--quick] [--device cpu] [--out bench/results]

For L = 2^12 ... 2^20 (batch 1, no gradients), each in its own process:
- ``backbone``: ``MambaBackbone`` (D, 4 layers) forward of a (1, L, D) input (chunked state passing
  above its chunk size, so memory stays bounded by one chunk's activations + input/output);
- ``embed``: ``MambaLM.embed(ids, pooling="mean")``, the embedding extraction path;
- ``bidirectional`` (with ``--kinds``): ``BiMambaBackbone`` (D, 4 layers) forward, chunked both
  ways.

Memory is the peak RSS above the process's RSS just before the input is made (CPU), or the
CUDA peak allocation. The least-squares slope of log(time) and log(memory) against log(L)
must be about 1. Writes scaling.json, scaling.md and scaling.png.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from mambaseq.bench.report import (bench_parser, loglog_plot, loglog_slope, machine_info,
                          machine_line, markdown_table, peak_rss_gb, run_isolated, time_call, write_results)
from mambaseq.core import (BiMambaBackbone, BiMambaBackboneConfig, MambaBackbone,
                           MambaBackboneConfig, MambaLM, MambaLMConfig)

QUICK = dict(log2_lengths=[12, 13, 14, 15, 16], repeats=2)
FULL = dict(log2_lengths=[12, 14, 16, 18, 20], repeats=3)
N_LAYER = 4


def current_rss_gb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2 ** 30   # resident pages (4 KiB)


def case(kind, length, d_model, repeats, device):
    torch.manual_seed(0)
    if kind == "backbone":
        model = MambaBackbone(MambaBackboneConfig(d_model=d_model, n_layer=N_LAYER),
                              device=device).eval()
    elif kind == "bidirectional":
        model = BiMambaBackbone(BiMambaBackboneConfig(d_model=d_model, n_layer=N_LAYER),
                                device=device).eval()
    else:
        model = MambaLM(MambaLMConfig(vocab_size=16, d_model=d_model, n_layer=N_LAYER),
                        device=device).eval()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = current_rss_gb()
    if kind in ("backbone", "bidirectional"):
        x = torch.randn(1, length, d_model, device=device)
        fn = lambda: model(x)                                            # noqa: E731
    else:
        ids = torch.randint(0, 16, (1, length), device=device)
        fn = lambda: model.embed(ids, pooling="mean")                     # noqa: E731
    with torch.no_grad():  # a single timed run at a long length is not worth a warm-up run
        timing = time_call(fn, repeats, warmup=1 if repeats > 1 else 0, device=device)
    memory = (torch.cuda.max_memory_allocated() / 2 ** 30 if device == "cuda"
              else peak_rss_gb() - base)
    return dict(kind=kind, length=length, d_model=d_model, n_layer=N_LAYER,
                steps_per_s=length / timing["median_s"], memory_gb=memory,
                baseline_rss_gb=base if device != "cuda" else None, **timing)


def markdown(result):
    kinds = result["kinds"]
    by = {}
    for r in result["rows"]:
        by.setdefault(r["length"], {})[r["kind"]] = r
    table = [[f"2^{length.bit_length() - 1}"]
             + [cell for k in kinds for cell in (v[k]["median_s"], v[k]["memory_gb"])]
             for length, v in sorted(by.items())]
    header = ["L"] + [f"{k} {unit}" for k in kinds for unit in ("s", "peak GB")]
    s = result["slopes"]
    slopes = "; ".join(f"{k} time {s[k + '_time']:.2f}, memory {s[k + '_memory']:.2f}"
                       for k in kinds)
    return "\n".join([
        f"### Scaling of a {N_LAYER}-layer backbone forward, D={result['d_model']} "
        f"(batch 1, no gradients, {result['device']})", "",
        markdown_table(header, table),
        "", f"log-log slopes: {slopes} (1 = linear). Memory is the peak RSS above the "
            f"process's RSS before the input was made.", "",
        f"![scaling]({result['name']}.png)", "", machine_line(result["meta"]), ""])


def run(args):
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    rows = []
    for log2 in args.log2_lengths:
        for kind in args.kinds:
            r = run_isolated("mambaseq.bench.scaling", ["--single", kind, 2 ** log2, "--d-model",
                                               args.d_model, "--repeats", args.repeats,
                                               "--device", args.device,
                                               "--threads", args.threads or 0])
            print(f"  scaling {kind} L=2^{log2}: {r['median_s']:.3f} s, "
                  f"{r['memory_gb']:.3f} GB", flush=True)
            rows.append(r)
    series = {k: ([r["length"] for r in rows if r["kind"] == k],
                  [r["median_s"] for r in rows if r["kind"] == k]) for k in args.kinds}
    mem = {k: ([r["length"] for r in rows if r["kind"] == k],
               [max(r["memory_gb"], 1e-4) for r in rows if r["kind"] == k])
           for k in args.kinds}
    slopes = {f"{k}_time": loglog_slope(*series[k]) for k in series}
    slopes.update({f"{k}_memory": loglog_slope(*mem[k]) for k in mem})
    result = dict(device=args.device, d_model=args.d_model, n_layer=N_LAYER, rows=rows,
                  kinds=list(args.kinds), name=args.name, slopes=slopes,
                  meta=machine_info(args.device))
    md = markdown(result)
    write_results(args.out, args.name, result, md)
    loglog_plot(Path(args.out) / f"{args.name}.png",
                [dict(xlabel="L (steps)", ylabel="seconds", series=series),
                 dict(xlabel="L (steps)", ylabel="peak memory above baseline (GB)", series=mem)],
                title=f"{N_LAYER}-layer Mamba backbone forward, D={args.d_model}, {args.device}")
    print(md)
    return result


def add_arguments(p):
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--log2-lengths", type=int, nargs="+", default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--kinds", nargs="+", default=["backbone", "embed"],
                   choices=["backbone", "embed", "bidirectional"], help="what to time")
    p.add_argument("--name", default="scaling", help="results file stem (NAME.json/.md/.png)")


def main(argv=None):
    p = bench_parser(__doc__, add_arguments, single_metavar=("KIND", "LENGTH"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.single:
        print(json.dumps(case(args.single[0], int(args.single[1]), args.d_model,
                              args.repeats or 1, args.device)))
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
