"""``mambaseq bench {scan,train,generate,scaling,audio_generate,all}``: the performance benchmarks.

Each writes ``<out>/<name>.json`` (every raw timing, the machine, the versions) and
``<out>/<name>.md``; ``scaling`` also ``scaling.png``; ``all`` also ``README.md`` joining the
tables. ``--quick`` uses fewer sizes and repeats (a few minutes on a 2-core CPU).

    python -m mambaseq.pipelines bench generate --quick --out bench/results
    python -m mambaseq.pipelines bench all --out bench/results
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .options import non_negative_int

log = logging.getLogger("mambaseq.bench")

HELP = ("benchmarks: selective scan, training and generation vs a Transformer, scaling to "
        "2^20, audio generation step vs forward")

BENCHES = ("scan", "train", "generate", "scaling", "audio_generate")


def add_arguments(parser):
    parser.add_argument("which", choices=[*BENCHES, "all"], help="which benchmark to run")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true",
                        help="fewer sizes and repeats: minutes on a small CPU")
    parser.add_argument("--threads", type=non_negative_int, default=1,
                        help="torch CPU threads for every model (0: torch's default); one "
                             "thread gives steadier figures on a shared machine")
    parser.add_argument("--out", default="bench/results", help="folder for JSON/Markdown/PNG")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny models and sizes (seconds): checks the plumbing and the "
                             "files, the figures mean nothing")


# --smoke: sizes small enough for the test suite.
SMOKE = {
    "generate": dict(d_model=32, n_layer=2, contexts=[64], batches=[1, 2], tokens=2, repeats=2),
    "train": dict(d_model=32, n_layer=2, lengths=[64], repeats=1),
    "scaling": dict(d_model=16, log2_lengths=[8, 9], repeats=1),
    "audio_generate": dict(preset="tiny", sample_rate=8000, seconds=0.03, check=60,
                           forward_points=2, repeats=1),
}


def _bench_args(module, args):
    """The module's own options at their defaults, plus the common ones."""
    p = argparse.ArgumentParser()
    module.add_arguments(p)
    ns = p.parse_args([])
    ns.quick, ns.device, ns.out, ns.threads = args.quick, args.device, args.out, args.threads
    if args.smoke:
        for key, value in SMOKE[module.__name__.split(".")[-1]].items():
            setattr(ns, key, value)
    return ns


def run_scan(args):
    """On CPU the lead's ``bench.scan_cpu`` cases (ratio vs mambapy; with no --quick also the
    2^20 forward and 65536 backward in their own processes); on CUDA ``bench.scan_gpu``."""
    if args.device == "cuda":
        from mambaseq.bench import scan_gpu
        extra = (["--batch", "1", "--d-inner", "1024", "--lengths", "2048", "65536"]
                 if args.quick else [])
        return scan_gpu.main([*extra, "--out", str(args.out)])
    from mambaseq.bench import scan_cpu
    from mambaseq.bench.report import machine_info, machine_line, time_call, write_results
    from mambaseq.kernels.cpu_scan import load_cpu_extension

    load_cpu_extension()
    if args.smoke:  # the kernel on a tiny input, no comparison
        x = scan_cpu.make_inputs(256)
        timing = time_call(lambda: scan_cpu.selective_scan_cpu(**x), repeats=2)
        md = f"### CPU selective scan (smoke)\n\nL=256 forward: {timing['median_s'] * 1e3:.2f} ms\n"
        write_results(args.out, "scan", dict(meta=machine_info("cpu"), smoke=timing), md)
        return
    ratio = scan_cpu.case_ratio(3 if args.quick else 5)
    meta = machine_info("cpu")
    result = dict(meta=meta, ratio=ratio)
    if args.quick:
        md = "\n".join([
            "### CPU selective scan (quick: forward ratio only)", "",
            "| case | figure |", "| --- | --- |",
            f"| forward B=1 E=256 N=16 L=16384: ours vs mambapy | {ratio['ours_s'] * 1e3:.1f} ms "
            f"vs {ratio['mambapy_s'] * 1e3:.0f} ms = **{ratio['speedup']:.1f}x** |", ""])
    else:
        result["million"] = scan_cpu.run_in_subprocess("million")
        result["backward"] = scan_cpu.run_in_subprocess("backward")
        md = "### " + scan_cpu.markdown(meta, ratio, result["million"], result["backward"])
    md += "\n" + machine_line(meta) + "\n"
    write_results(args.out, "scan", result, md)
    print(md)


def run(args):
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is visible on this machine")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    which = BENCHES if args.which == "all" else (args.which,)
    for name in which:
        log.info("bench %s (%s%s) -> %s", name, args.device, ", quick" if args.quick else "", out)
        if name == "scan":
            run_scan(args)
        else:
            import importlib
            module = importlib.import_module(f"mambaseq.bench.{name}")
            ns = _bench_args(module, args)
            module.run(ns)
    if args.which == "all":
        parts = [(out / f"{n}.md").read_text() for n in BENCHES if (out / f"{n}.md").exists()]
        (out / "README.md").write_text("## Benchmark results\n\n"
                                       f"`python -m mambaseq.pipelines bench all{' --quick' if args.quick else ''}"
                                       f" --device {args.device} --out {args.out}`\n\n"
                                       + "\n".join(parts))
    return 0
