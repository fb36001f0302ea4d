"""Published checkpoints on the CPU: transformers vs the converted model, torch.compile,
and the memory per-block gradient checkpointing saves.

    python -m mambaseq.bench.hub [--quick] [--threads 1] [--out bench/results]

Three measurements, each pair side by side in one run:
- ``transformers``: a random transformers ``MambaForCausalLM`` (D=128, 4 layers, vocab 256),
  saved with ``save_pretrained``, converted by ``core.hub``; one forward over ``--length``
  tokens (batch 1, no grad) in transformers and in ours, and the max |logit difference|.
- ``compile``: a ``MambaLM`` of the same size, eager vs ``torch.compile`` (inductor):
  forward without grad and forward+backward; the compile time is reported apart.
- ``grad_checkpoint``: forward+backward of that ``MambaLM`` at ``--ckpt-length`` tokens,
  without and with ``set_grad_checkpointing``, each in a fresh process: peak RSS and time.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from mambaseq.bench.report import (bench_parser, fmt, machine_info, machine_line, markdown_table,
                                   peak_rss_gb, run_isolated, time_call, write_results)
from mambaseq.core import MambaLM, MambaLMConfig, hub
from mambaseq.core.backbone import set_grad_checkpointing

D_MODEL, N_LAYER, VOCAB = 128, 4, 256


def vs_transformers(length, repeats):
    """Forward seconds of transformers and of the converted model on the same weights."""
    import transformers

    torch.manual_seed(0)
    config = transformers.MambaConfig(vocab_size=VOCAB, hidden_size=D_MODEL,
                                      num_hidden_layers=N_LAYER)
    theirs = transformers.MambaForCausalLM(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        theirs.save_pretrained(tmp)
        ours = hub.mamba_lm_from_hf(*hub.read_hub_folder(tmp), src=tmp)
    ids = torch.randint(0, VOCAB, (1, length))
    with torch.no_grad():
        diff = (ours(ids) - theirs(ids).logits).abs().max().item()
        t_theirs = time_call(lambda: theirs(ids), repeats)
        t_ours = time_call(lambda: ours(ids), repeats)
    return {"length": length, "transformers_s": t_theirs["median_s"],
            "ours_s": t_ours["median_s"], "speedup": t_theirs["median_s"] / t_ours["median_s"],
            "max_abs_logit_diff": diff, "transformers_raw_s": t_theirs["raw_s"],
            "ours_raw_s": t_ours["raw_s"], "transformers_version": transformers.__version__}


def _train_step(model, ids):
    loss = F.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()


def vs_compile(length, repeats):
    """Eager vs torch.compile (inductor) of one MambaLM: forward and forward+backward."""
    torch.manual_seed(0)
    lm = MambaLM(MambaLMConfig(vocab_size=VOCAB, d_model=D_MODEL, n_layer=N_LAYER))
    ids = torch.randint(0, VOCAB, (1, length + 1))
    compiled = torch.compile(lm, fullgraph=True)
    rows = {}
    for mode in ("forward", "forward+backward"):
        if mode == "forward":
            def run(model):
                with torch.no_grad():
                    model(ids[:, :-1])
        else:
            def run(model):
                _train_step(model, ids)
        start = time.perf_counter()
        run(compiled)                                   # the first call compiles
        compile_s = time.perf_counter() - start
        eager = time_call(lambda: run(lm), repeats)
        comp = time_call(lambda: run(compiled), repeats)
        rows[mode] = {"eager_s": eager["median_s"], "compiled_s": comp["median_s"],
                      "speedup": eager["median_s"] / comp["median_s"],
                      "first_call_s": compile_s, "eager_raw_s": eager["raw_s"],
                      "compiled_raw_s": comp["raw_s"]}
    return {"length": length, **rows}


def ckpt_case(length, checkpointed):
    """One forward+backward in this process: the bytes autograd keeps for the backward pass
    (each storage counted once), peak RSS and seconds."""
    torch.manual_seed(0)
    lm = MambaLM(MambaLMConfig(vocab_size=16, d_model=D_MODEL, n_layer=N_LAYER))
    set_grad_checkpointing(lm, checkpointed)
    ids = torch.randint(0, 16, (1, length + 1))
    kept = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    base = peak_rss_gb()
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(lm(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    return {"length": length, "grad_checkpoint": checkpointed,
            "seconds": time.perf_counter() - start, "saved_for_backward_gb":
            sum(kept.values()) / 2 ** 30, "peak_rss_gb": peak_rss_gb(), "rss_before_gb": base}


def add_arguments(p):
    p.add_argument("--length", type=int, default=4096, help="tokens of the forward comparisons")
    p.add_argument("--ckpt-length", type=int, default=32768,
                   help="tokens of the gradient-checkpointing comparison")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip", nargs="*", default=[],
                   choices=("transformers", "compile", "grad_checkpoint"))


def main(argv=None):
    p = bench_parser(__doc__, add_arguments, single_metavar=("LENGTH", "CHECKPOINTED"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.single:
        print(json.dumps(ckpt_case(int(args.single[0]), args.single[1] == "1")))
        return
    if args.quick:
        args.length, args.ckpt_length, args.repeats = 1024, 8192, 2
    meta = machine_info(args.device)
    data, md = {"machine": meta, "command": " ".join(["python -m mambaseq.bench.hub"]
                                                     + sys.argv[1:])}, []
    if "transformers" not in args.skip:
        r = data["transformers"] = vs_transformers(args.length, args.repeats)
        md += [f"### transformers MambaForCausalLM vs the converted MambaLM (CPU forward)",
               "", f"D={D_MODEL}, {N_LAYER} layers, vocab {VOCAB}, batch 1, "
               f"{r['length']} tokens, no grad; transformers {r['transformers_version']}.", "",
               markdown_table(["transformers s", "ours s", "speedup", "max |logit diff|"],
                              [[r["transformers_s"], r["ours_s"], f"{fmt(r['speedup'])}x",
                                f"{r['max_abs_logit_diff']:.1e}"]]), ""]
    if "compile" not in args.skip:
        r = data["compile"] = vs_compile(args.length, args.repeats)
        md += ["### torch.compile (inductor, fullgraph) vs eager", "",
               f"MambaLM D={D_MODEL}, {N_LAYER} layers, batch 1, {r['length']} tokens.", "",
               markdown_table(["pass", "eager s", "compiled s", "speedup", "first call s"],
                              [[m, r[m]["eager_s"], r[m]["compiled_s"],
                                f"{fmt(r[m]['speedup'])}x", r[m]["first_call_s"]]
                               for m in ("forward", "forward+backward")]), ""]
    if "grad_checkpoint" not in args.skip:
        rows = [run_isolated("mambaseq.bench.hub", ["--single", args.ckpt_length, int(on),
                                                    "--threads", args.threads])
                for on in (False, True)]
        data["grad_checkpoint"] = rows
        md += ["### Per-block gradient checkpointing (forward+backward, fresh process each)", "",
               f"MambaLM D={D_MODEL}, {N_LAYER} layers, batch 1, {args.ckpt_length} tokens.",
               "", markdown_table(["grad_checkpoint", "kept for backward GB", "peak RSS GB",
                                   "RSS before GB", "seconds"],
                                  [[r["grad_checkpoint"], r["saved_for_backward_gb"],
                                    r["peak_rss_gb"], r["rss_before_gb"], r["seconds"]]
                                   for r in rows]),
               "", f"Peak RSS saved: {fmt(rows[0]['peak_rss_gb'] - rows[1]['peak_rss_gb'])} GB "
                   f"({fmt(100 * (1 - rows[1]['peak_rss_gb'] / rows[0]['peak_rss_gb']))}% of "
                   f"the peak); time x{fmt(rows[1]['seconds'] / rows[0]['seconds'])}.", ""]
    md += [f"Command: `{data['command']}`", "", machine_line(meta)]
    paths = write_results(args.out, "hub", data, "\n".join(md))
    print("\n".join(md))
    print(f"-> {paths[0]}, {paths[1]}")


if __name__ == "__main__":
    main()
