"""Generation benchmark: per-token latency and tokens/s against context length.

    python -m mambaseq.bench.generate [--quick] [--device cpu] [--out bench/results]

Compares, pair by pair in one run, at each context length and batch size:
- ``mamba_step``:  ``MambaLM.step`` (the clear reference step; O(1) per token);
- ``mamba_fused``: ``core.fast_step.FastStepper`` (preallocated, fused; same numbers);
- ``mamba_compiled`` (not with --quick): ``core.fast_step.compile_step`` (torch.compile);
- ``transformer_kv``: a Transformer LM of the same parameter count with a KV cache.

Each measurement decodes ``--tokens`` greedy tokens (argmax fed back). The caches are set to
the context length directly (random keys/values; random SSM state): a decode step costs the
same whatever the cached values are, and filling a 16k-token KV cache by a real prefill
would dominate the run. "memory" is what each model holds for its batch at that context:
the KV cache (grows with context) or the recurrent state (does not).
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from mambaseq.bench.report import (bench_parser, fmt, machine_info, machine_line, markdown_table,
                          time_call, write_results)
from mambaseq.bench.transformer import count_parameters, matched_transformer
from mambaseq.core import MambaLM
from mambaseq.core.fast_step import FastStepper, compile_step

QUICK = dict(contexts=[1024, 4096, 16384], batches=[1, 16], tokens=8, repeats=3)
FULL = dict(contexts=[1024, 4096, 16384, 65536], batches=[1, 16], tokens=16, repeats=5)


def build_models(d_model, n_layer, vocab_size, device, seed=0):
    torch.manual_seed(seed)
    lm = MambaLM(vocab_size, d_model, n_layer, device=device).eval()
    tf = matched_transformer(lm, device=device).eval()
    return lm, tf


def state_bytes(cache):
    return sum(s.conv.numel() * s.conv.element_size() + s.ssm.numel() * s.ssm.element_size()
               for s in cache)


def decode(step, tok, n):
    """n greedy steps: tok (B,) -> the last tokens; ``step`` maps tokens to logits."""
    for _ in range(n):
        tok = step(tok).argmax(-1)
    return tok


def measure_pair(lm, tf, context, batch, args, compiled=None):
    """All models at one (context, batch); returns a list of row dicts."""
    device = args.device
    tok = torch.randint(0, lm.config.vocab_size, (batch,), device=device)
    rows = []

    def row(name, timing, memory_bytes, extra=None):
        per_token = timing["median_s"] / args.tokens
        rows.append(dict(model=name, context=context, batch=batch, tokens=args.tokens,
                         ms_per_token=per_token * 1e3, tokens_per_s=batch / per_token,
                         memory_mb=memory_bytes / 2 ** 20, **timing, **(extra or {})))

    with torch.no_grad():
        cache = lm.allocate_cache(batch, device=device)
        for s in cache:
            s.ssm.normal_(std=0.1)
            s.conv.normal_()
        row("mamba_step", time_call(lambda: decode(lambda t: lm.step(t, cache), tok, args.tokens),
                                    args.repeats, device=device), state_bytes(cache))
        fast = FastStepper(lm, batch)
        fast.load_state(cache)
        row("mamba_fused", time_call(lambda: decode(fast.step, tok, args.tokens), args.repeats,
                                     device=device), state_bytes(cache))
        if compiled is not None:
            row("mamba_compiled", time_call(lambda: decode(lambda t: compiled(t, cache), tok,
                                                           args.tokens),
                                            args.repeats, device=device), state_bytes(cache))
        kv = tf.allocate_cache(batch, context + args.tokens, device=device)
        kv.k.normal_()
        kv.v.normal_()

        def tf_decode():
            kv.length = context
            return decode(lambda t: tf.step(t, kv), tok, args.tokens)
        per_position = kv.nbytes / kv.max_len
        row("transformer_kv", time_call(tf_decode, args.repeats, device=device),
            per_position * context)
        del kv
    return rows


def check_fused(lm, batch, device, steps=8):
    """Max |logits| difference of FastStepper vs MambaLM.step over a few real steps."""
    with torch.no_grad():
        cache = lm.allocate_cache(batch, device=device)
        fast = FastStepper(lm, batch)
        ids = torch.randint(0, lm.config.vocab_size, (batch, steps), device=device)
        return max((lm.step(ids[:, t], cache) - fast.step(ids[:, t])).abs().max().item()
                   for t in range(steps))


def markdown(result):
    rows_by_key = {}
    for r in result["rows"]:
        rows_by_key.setdefault((r["context"], r["batch"]), {})[r["model"]] = r
    models = [m for m in ("mamba_step", "mamba_fused", "mamba_compiled", "transformer_kv")
              if any(m in v for v in rows_by_key.values())]
    header = ["context", "batch"] + [f"{m} tok/s" for m in models] + \
             ["fused / transformer", "fused / step", "Transformer KV MB", "Mamba state MB"]
    table = []
    for (ctx, b), v in sorted(rows_by_key.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        tps = [v[m]["tokens_per_s"] if m in v else None for m in models]
        table.append([ctx, b, *tps,
                      f"**{v['mamba_fused']['tokens_per_s'] / v['transformer_kv']['tokens_per_s']:.1f}x**",
                      f"{v['mamba_fused']['tokens_per_s'] / v['mamba_step']['tokens_per_s']:.1f}x",
                      v["transformer_kv"]["memory_mb"], v["mamba_fused"]["memory_mb"]])
    m = result["models"]
    lines = [f"### Generation (greedy decode, {result['device']})", "",
             f"MambaLM D={m['d_model']} {m['mamba_layers']} layers ({m['mamba_params']:,} params) vs "
             f"Transformer D={m['d_model']} {m['transformer_layers']} layers, MLP {m['transformer_d_mlp']} "
             f"({m['transformer_params']:,} params, RoPE, SDPA, KV cache); "
             f"{result['tokens']} tokens per timing, median of {result['repeats']}. "
             f"Fused step max |logit diff| vs MambaLM.step: {fmt(result['fused_max_abs_diff'])}.",
             "", markdown_table(header, table), ""]
    if result.get("compile_s"):
        lines += [f"torch.compile of MambaLM.step: {', '.join(f'batch {b}: {s:.0f} s' for b, s in result['compile_s'].items())} "
                  f"to compile; max |logit diff| {fmt(result.get('compiled_max_abs_diff'))}.", ""]
    lines += [machine_line(result["meta"]), ""]
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
                  models=dict(d_model=args.d_model, mamba_layers=args.n_layer,
                              mamba_params=count_parameters(lm),
                              transformer_layers=tf.config.n_layer,
                              transformer_heads=tf.config.n_head,
                              transformer_d_mlp=tf.config.d_mlp,
                              transformer_params=count_parameters(tf),
                              vocab_size=args.vocab_size),
                  fused_max_abs_diff=check_fused(lm, 2, args.device), rows=[],
                  note="caches set to the context length directly (random contents); "
                       "memory = KV cache or recurrent state held for the batch")
    compiled, compile_s, diffs = {}, {}, []
    if args.compile:
        for b in args.batches:
            step = compile_step(lm)
            cache = lm.allocate_cache(b, device=args.device)
            ref_cache = lm.allocate_cache(b, device=args.device)
            ids = torch.randint(0, args.vocab_size, (b,), device=args.device)
            start = time.perf_counter()
            out = step(ids, cache)
            compile_s[str(b)] = time.perf_counter() - start
            with torch.no_grad():
                diffs.append((out - lm.step(ids, ref_cache)).abs().max().item())
            compiled[b] = step
        result.update(compile_s=compile_s, compiled_max_abs_diff=max(diffs))
    for context in args.contexts:
        for batch in args.batches:
            if (args.max_kv_gb and batch * context * tf.config.d_model * tf.config.n_layer * 8
                    / 2 ** 30 > args.max_kv_gb):
                result.setdefault("skipped", []).append(
                    dict(context=context, batch=batch, reason=f"KV cache over --max-kv-gb {args.max_kv_gb}"))
                continue
            rows = measure_pair(lm, tf, context, batch, args, compiled.get(batch))
            for r in rows:
                print(f"  generate ctx={context} B={batch} {r['model']}: "
                      f"{r['tokens_per_s']:.1f} tok/s, {r['ms_per_token']:.2f} ms/token", flush=True)
            result["rows"].extend(rows)
    result["meta"] = machine_info(args.device)
    md = markdown(result)
    write_results(args.out, "generate", result, md)
    print(md)
    return result


def add_arguments(p):
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=8, help="Mamba layers (the Transformer gets half)")
    p.add_argument("--vocab-size", type=int, default=16)
    p.add_argument("--contexts", type=int, nargs="+", default=None)
    p.add_argument("--batches", type=int, nargs="+", default=None)
    p.add_argument("--tokens", type=int, default=None, help="decoded tokens per timing")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--max-kv-gb", type=float, default=6.0,
                   help="skip (context, batch) pairs whose KV cache exceeds this")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="also time torch.compile of MambaLM.step (default: not with --quick)")


def main(argv=None):
    p = bench_parser(__doc__, add_arguments)
    args = p.parse_args(argv)
    if args.compile is None:
        args.compile = not args.quick
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
