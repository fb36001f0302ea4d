"""Generation benchmark: per-token latency and tokens/s against context length.

    python -m mambaseq.bench.generate [--quick] [--baseline /tmp/base-step] [--out DIR]

Compares, in one run, at each context length and batch size:
- ``mamba_step``: ``MambaLM.step``, the step every user gets (O(1) per token);
- ``mamba_step_base`` (with ``--baseline CHECKOUT``): the same model's ``MambaLM.step`` as an
  older checkout has it, same weights and threads, timed in a child process
  (``bench.baseline``); its cost does not depend on the context, so it is timed once per
  batch size, right after this checkout's step at the first context;
- ``transformer_kv``: a Transformer LM of the same width and parameter count with a
  preallocated KV cache and its own lean decoding step (``TransformerLM.step``).

Each measurement decodes ``--tokens`` greedy tokens (argmax fed back). The caches are set to
the context length directly (random keys/values; random SSM state): a decode step costs the
same whatever the cached values are, and filling a 16k-token KV cache by a real prefill
would dominate the run. "memory" is what each model holds for its batch at that context:
the KV cache (grows with context) or the recurrent state (does not). Every timing keeps wall
and CPU time (``bench.baseline``); the ratios are of CPU time, which a shared machine's
other jobs disturb far less, and the tables show both.
"""
from __future__ import annotations

import subprocess
import sys

import torch

from mambaseq.bench.baseline import time_baseline_step, time_wall_and_cpu
from mambaseq.bench.report import (bench_parser, machine_info, machine_line, markdown_table,
                                   write_results)
from mambaseq.bench.transformer import count_parameters, matched_transformer
from mambaseq.core import MambaLM, MambaLMConfig

QUICK = dict(contexts=[1024, 4096, 16384], batches=[1, 16], tokens=8, repeats=3)
FULL = dict(contexts=[1024, 4096, 16384, 65536], batches=[1, 16], tokens=16, repeats=5)


def build_models(d_model, n_layer, vocab_size, device, seed=0):
    torch.manual_seed(seed)
    lm = MambaLM(MambaLMConfig(vocab_size=vocab_size, d_model=d_model, n_layer=n_layer),
                 device=device).eval()
    tf = matched_transformer(lm, device=device).eval()
    return lm, tf


def state_bytes(cache):
    """Bytes of a ``MambaLM`` cache: the conv and ssm state of every block."""
    return sum(s.conv.nbytes + s.ssm.nbytes for s in cache.layers)


def decode(step, tok, n):
    """n greedy steps: tok (B,) -> the last tokens; ``step`` maps tokens to logits."""
    for _ in range(n):
        tok = step(tok).argmax(-1)
    return tok


def checkout_commit(path):
    """The commit a source checkout is at ('' when git cannot say)."""
    proc = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
    return proc.stdout.strip()


def measure_pair(lm, tf, context, batch, args, baseline=False):
    """All models at one (context, batch); returns a list of row dicts."""
    device = args.device
    tok = torch.randint(0, lm.config.vocab_size, (batch,), device=device)
    rows = []

    def row(name, timing, memory_bytes):
        per_token, cpu_per_token = (timing["median_s"] / args.tokens,
                                    timing["cpu_median_s"] / args.tokens)
        rows.append(dict(model=name, context=context, batch=batch, tokens=args.tokens,
                         ms_per_token=per_token * 1e3, tokens_per_s=batch / per_token,
                         cpu_ms_per_token=cpu_per_token * 1e3,
                         cpu_tokens_per_s=batch / cpu_per_token,
                         memory_mb=memory_bytes / 2 ** 20, **timing))

    with torch.no_grad():
        cache = lm.allocate_cache(batch, device=device)
        for s in cache.layers:
            s.ssm.normal_(std=0.1)
            s.conv.normal_()
        row("mamba_step", time_wall_and_cpu(
            lambda: decode(lambda t: lm.step(t, cache), tok, args.tokens), args.repeats),
            state_bytes(cache))
        if baseline:
            row("mamba_step_base", time_baseline_step(args.baseline, "lm", lm, batch,
                                                      args.tokens, args.repeats),
                state_bytes(cache))
        kv = tf.allocate_cache(batch, context + args.tokens, device=device)
        kv.k.normal_()
        kv.v.normal_()

        def tf_decode():
            kv.length = context
            return decode(lambda t: tf.step(t, kv), tok, args.tokens)
        per_position = kv.nbytes / kv.max_len
        row("transformer_kv", time_wall_and_cpu(tf_decode, args.repeats), per_position * context)
        del kv
    return rows


def markdown(result):
    rows_by_key = {}
    for r in result["rows"]:
        rows_by_key.setdefault((r["context"], r["batch"]), {})[r["model"]] = r
    base = {r["batch"]: r for r in result["rows"] if r["model"] == "mamba_step_base"}
    header = ["context", "batch", "mamba_step ms/token (CPU, wall)",
              "transformer_kv ms/token (CPU, wall)", "mamba / transformer"]
    if base:
        header += ["mamba_step_base ms/token (CPU, wall)", "mamba / base"]
    header += ["Transformer KV MB", "Mamba state MB"]

    def ms(r):
        return f"{r['cpu_ms_per_token']:.2f}, {r['ms_per_token']:.2f}"

    table = []
    for (ctx, b), v in sorted(rows_by_key.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        ours, tf = v["mamba_step"], v["transformer_kv"]
        line = [ctx, b, ms(ours), ms(tf),
                f"**{tf['cpu_ms_per_token'] / ours['cpu_ms_per_token']:.1f}x**"]
        if base:
            speedup = base[b]["cpu_ms_per_token"] / ours["cpu_ms_per_token"]
            line += [ms(base[b]), f"**{speedup:.1f}x**"]
        table.append(line + [tf["memory_mb"], ours["memory_mb"]])
    m = result["models"]
    lines = [f"### Generation (greedy decode, {result['device']})", "",
             f"MambaLM D={m['d_model']} {m['mamba_layers']} layers, vocabulary {m['vocab_size']} "
             f"({m['mamba_params']:,} params) vs Transformer D={m['d_model']} "
             f"{m['transformer_layers']} layers, MLP {m['transformer_d_mlp']} "
             f"({m['transformer_params']:,} params, RoPE, SDPA, KV cache); "
             f"{result['tokens']} tokens per timing, median of {result['repeats']}, "
             f"{result['threads']} thread(s) for every model. Times per token (the whole "
             "batch) in CPU and wall ms; ratios of CPU time.", ""]
    if base:
        lines += [f"`mamba_step_base`: `MambaLM.step` of the checkout {result['baseline']} "
                  f"(commit {result['baseline_commit'] or '?'}), same weights, timed once per "
                  "batch size (its cost does not depend on the context).", ""]
    lines += [markdown_table(header, table), "", machine_line(result["meta"]), ""]
    return "\n".join(lines)


def run(args):
    preset = QUICK if args.quick else FULL
    for key, value in preset.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.threads:
        torch.set_num_threads(args.threads)
    lm, tf = build_models(args.d_model, args.n_layer, args.vocab_size, args.device)
    result = dict(device=args.device, tokens=args.tokens, repeats=args.repeats,
                  threads=torch.get_num_threads(),
                  models=dict(d_model=args.d_model, mamba_layers=args.n_layer,
                              mamba_params=count_parameters(lm),
                              transformer_layers=tf.config.n_layer,
                              transformer_heads=tf.config.n_head,
                              transformer_d_mlp=tf.config.d_mlp,
                              transformer_params=count_parameters(tf),
                              vocab_size=args.vocab_size),
                  rows=[],
                  note="caches set to the context length directly (random contents); "
                       "memory = KV cache or recurrent state held for the batch")
    if args.baseline:
        result.update(baseline=args.baseline, baseline_commit=checkout_commit(args.baseline))
    timed_base = set()
    for context in args.contexts:
        for batch in args.batches:
            if (args.max_kv_gb and batch * context * tf.config.d_model * tf.config.n_layer * 8
                    / 2 ** 30 > args.max_kv_gb):
                result.setdefault("skipped", []).append(
                    dict(context=context, batch=batch,
                         reason=f"KV cache over --max-kv-gb {args.max_kv_gb}"))
                continue
            rows = measure_pair(lm, tf, context, batch, args,
                                baseline=bool(args.baseline) and batch not in timed_base)
            timed_base.add(batch)
            for r in rows:
                print(f"  generate ctx={context} B={batch} {r['model']}: "
                      f"{r['tokens_per_s']:.1f} tok/s, {r['ms_per_token']:.2f} ms/token",
                      flush=True)
            result["rows"].extend(rows)
    result["meta"] = machine_info(args.device)
    md = markdown(result)
    write_results(args.out, "generate", result, md)
    print(md)
    return result


def add_arguments(p):
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=8, help="Mamba layers (the Transformer gets half)")
    p.add_argument("--vocab-size", type=int, default=256)
    p.add_argument("--contexts", type=int, nargs="+", default=None)
    p.add_argument("--batches", type=int, nargs="+", default=None)
    p.add_argument("--tokens", type=int, default=None, help="decoded tokens per timing")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--max-kv-gb", type=float, default=6.0,
                   help="skip (context, batch) pairs whose KV cache exceeds this")
    p.add_argument("--baseline", default=None, metavar="CHECKOUT",
                   help="also time MambaLM.step of an older source checkout (e.g. a "
                        "`git worktree add /tmp/base-step c6272ea`), same weights and threads")


def main(argv=None):
    p = bench_parser(__doc__, add_arguments)
    args = p.parse_args(argv)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
