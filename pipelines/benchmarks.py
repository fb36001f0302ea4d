"""The performance benchmarks as a job: selective scan, training and generation against a
Transformer, scaling to 2^20, audio generation step against forward, and data loading from a
human-sized genome (``mambaseq.bench``).

    from mambaseq.pipelines import BenchConfig, run_benchmarks
    result = run_benchmarks(BenchConfig(which="generate", quick=True, out="bench/results"))
    result.markdown["generate"].read_text()

Each benchmark writes ``<out>/<name>.json`` (every raw timing, the machine, the versions) and
``<out>/<name>.md``; ``scaling`` also ``scaling.png``; ``all`` also ``README.md`` joining the
tables. ``quick`` uses fewer sizes and repeats (a few minutes on a 2-core CPU); ``smoke``
tiny sizes (seconds: the plumbing and the files, the figures mean nothing). ``out`` follows
``training.out_folder`` (new, empty, or a folder of benchmark results). ``data`` (not part of
``all``: it writes a genome of ``size`` bases, 3 GB by default) runs ``bench.data``.
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
from pathlib import Path

from .training import (Config, non_negative_int, option, positive_float, resolve_device,
                       run_folder)

log = logging.getLogger("mambaseq.bench")

BENCHES = ("scan", "train", "generate", "scaling", "audio_generate")
EXTRA_BENCHES = ("data",)          # run only when named

# smoke: sizes small enough for the test suite (options of each bench module).
SMOKE = {
    "generate": dict(d_model=32, n_layer=2, contexts=[64], batches=[1, 2], tokens=2, repeats=2),
    "train": dict(d_model=32, n_layer=2, lengths=[64], repeats=1),
    "scaling": dict(d_model=16, log2_lengths=[8, 9], repeats=1),
    "audio_generate": dict(preset="tiny", sample_rate=8000, seconds=0.03, check=60,
                           forward_points=2, repeats=1),
    "data": dict(size=4e6, small=2.0, batches=3),
}

# quick on a GPU: the scan at one batch and width, two lengths (bench.scan_gpu's options).
SCAN_GPU_QUICK = dict(batch=[1], d_inner=[1024], lengths=[2048, 65536])


@dataclasses.dataclass(kw_only=True)
class BenchConfig(Config):
    """Options of :func:`run_benchmarks` (and of ``mambaseq bench``)."""

    OPTIONS_GROUP = "bench"
    which: str = option(positional=True, choices=(*BENCHES, *EXTRA_BENCHES, "all"),
                        help="which benchmark to run")
    device: str = option("cpu", choices=("cpu", "cuda"), help="where the benchmarks run")
    quick: bool = option(False, help="fewer sizes and repeats: minutes on a small CPU")
    threads: int = option(1, rule=non_negative_int,
                          help="torch CPU threads for every model (0: torch's default); one "
                               "thread gives steadier figures on a shared machine")
    out: str = option("bench/results", help="folder for JSON/Markdown/PNG")
    smoke: bool = option(False, help="tiny models and sizes (seconds): checks the plumbing and "
                                     "the files, the figures mean nothing")
    size: float = option(3.1e9, rule=positive_float,
                         help="data: bases of the generated hg38-shaped genome (written once "
                              "to $MAMBASEQ_CACHE_DIR/bench-data, reused)")
    json: str | None = option(None, metavar="FILE",
                              help="data: also write the results' JSON to this file")


@dataclasses.dataclass
class BenchResult:
    """What :func:`run_benchmarks` ran and wrote: the folder, the benchmarks in order, each
    one's Markdown table (name -> ``<out>/<name>.md``) and, for ``all``, the README joining
    them (else None)."""

    out: Path
    benchmarks: list[str]
    markdown: dict[str, Path]
    readme: Path | None


def bench_options(module, config: BenchConfig, out: Path):
    """The options of bench module ``module`` (``mambaseq.bench.<name>``): its defaults,
    the shared ones from ``config``, and the smoke sizes when ``config.smoke``."""
    from mambaseq.bench.report import bench_parser

    options = bench_parser(module.__doc__, module.add_arguments).parse_args([])
    options.quick, options.device, options.out, options.threads = (
        config.quick, config.device, out, config.threads)
    if module.__name__.endswith(".data"):
        options.size, options.json = config.size, config.json
    if config.smoke:
        for key, value in SMOKE[module.__name__.split(".")[-1]].items():
            setattr(options, key, value)
    return options


def run_scan(config: BenchConfig, out: Path) -> None:
    """On CPU ``bench.scan_cpu``'s cases (the ratio against mambapy; without ``quick`` also
    the 2^20 forward and the 65536 backward, each in its own process); on CUDA
    ``bench.scan_gpu``."""
    if config.device == "cuda":
        from mambaseq.bench import scan_gpu
        options = scan_gpu.parse_args([])
        if config.quick:
            vars(options).update(SCAN_GPU_QUICK)
        options.out = out
        scan_gpu.run(options, f"mambaseq bench scan with device=cuda, quick={config.quick}")
        return
    from mambaseq.bench import scan_cpu
    from mambaseq.bench.report import machine_info, machine_line, time_call, write_results
    from mambaseq.kernels.cpu_scan import load_cpu_extension

    load_cpu_extension()
    if config.smoke:  # the kernel on a tiny input, no comparison
        x = scan_cpu.make_inputs(256)
        timing = time_call(lambda: scan_cpu.selective_scan_cpu(**x), repeats=2)
        md = f"### CPU selective scan (smoke)\n\nL=256 forward: {timing['median_s'] * 1e3:.2f} ms\n"
        write_results(out, "scan", dict(meta=machine_info("cpu"), smoke=timing), md)
        return
    ratio = scan_cpu.case_ratio(3 if config.quick else 5)
    meta = machine_info("cpu")
    result = dict(meta=meta, ratio=ratio)
    if config.quick:
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
    write_results(out, "scan", result, md)
    print(md)


def run_benchmarks(config: BenchConfig) -> BenchResult:
    """Run benchmark ``config.which`` (or all of them, in :data:`BENCHES` order) into
    ``config.out``.

        result = run_benchmarks(BenchConfig(which="all", smoke=True, out="/tmp/b"))
        result.benchmarks, result.readme        # ["scan", "train", ...], /tmp/b/README.md

    Raises:
        ValueError: ``device`` cuda without a visible GPU;
        out_folder.OutRefused: ``out`` is not a folder of benchmark results (or new, empty).
    """
    import torch

    resolve_device(config.device)                 # names the device when there is no GPU
    if config.threads:
        torch.set_num_threads(config.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    which = list(BENCHES) if config.which == "all" else [config.which]
    with run_folder(config, "bench", training=False) as out:
        for name in which:
            log.info("bench %s (%s%s) -> %s", name, config.device,
                     ", quick" if config.quick else "", out)
            if name == "scan":
                run_scan(config, out)
            else:
                module = importlib.import_module(f"mambaseq.bench.{name}")
                module.run(bench_options(module, config, out))
        markdown = {n: out / f"{n}.md" for n in which if (out / f"{n}.md").exists()}
        readme = None
        if config.which == "all":
            readme = out / "README.md"
            readme.write_text("## Benchmark results\n\n"
                              f"Made by `mambaseq bench all` with device={config.device}, "
                              f"quick={config.quick}, threads={config.threads}, out={config.out}"
                              "\n\n" + "\n".join(p.read_text() for p in markdown.values()))
    return BenchResult(out=out, benchmarks=which, markdown=markdown, readme=readme)
