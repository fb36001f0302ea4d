"""Data loading benchmark: can the genome token cache and the loop's prefetch keep a GPU fed
from a whole human genome?

    mambaseq bench data [--size 3.1e9] [--json FILE] [--out bench/results/data]
    python -m mambaseq.bench.data [--size 3.1e9] [--batches 1000] [--out bench/results/data]

The genome: ``--size`` bases shaped like hg38 (24 records in hg38's proportions, 60-column
lines, N runs at both ends and in the middle of every record as at telomeres and
centromeres plus a few gaps, half the bases soft-masked in stretches of 0.3-6 kb), seeded,
written once to ``$MAMBASEQ_CACHE_DIR/bench-data/human_like_<size>.fa`` (temp name +
rename, reused by later runs; ``--genome-dir`` puts it elsewhere). Its FASTA index and
token cache go to ``bench-data/cache`` (deleted before the first-use case).

One row per case, each in a fresh process (its peak RSS is its own):

- ``first_use``: ``Genome`` (index) + ``TokenCache.open`` (encoding) from nothing;
- ``window x batch``: ``GenomeWindows.get_batch`` for 1 kb x 64, 16 kb x 8, 128 kb x 2
  (clm, RC augmentation, max_n_frac 0.1; ``--batches`` batches after one warm-up):
  tokens_per_s and the process's peak RSS, also on a genome ``--small`` times smaller (the
  RSS must not grow with the genome);
- ``stub_busy``: the share of the time a loop whose model step is a 5 ms sleep spends in
  that sleep, its 64 x 1 kb batches coming from the training loop's ``Prefetcher``;
- ``audio crops``: ``AudioClips.crops`` (16 kHz, 4096 + 1 samples x 16) per second from
  clips in the audio token cache.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from mambaseq.bench.report import (bench_parser, fmt, machine_info, machine_line,
                                   markdown_table, peak_rss_gb, run_isolated, write_results)

# hg38's chromosome lengths (Mb), chr1..22, X, Y: the shares of the generated records
HG38_MB = (248.96, 242.19, 198.30, 190.21, 181.54, 170.81, 159.35, 145.14, 138.39, 133.80,
           135.09, 133.28, 114.36, 107.04, 101.99, 90.34, 83.26, 80.37, 58.62, 64.44, 46.71,
           50.82, 156.04, 57.23)
CASES = ((1024, 64), (16384, 8), (131072, 2))
LINE = 60
STEP_S = 0.005                     # the stub model step
TARGETS = {"tokens_per_s_1k": 50e6, "tokens_per_s_128k": 200e6, "stub_busy": 0.95,
           "first_use_s": 180.0}


def genome_path(folder: Path, size: float) -> Path:
    return Path(folder) / f"human_like_{int(size)}.fa"


def write_genome(path: Path, size: float, seed: int = 0) -> Path:
    """The hg38-shaped FASTA of ``size`` bases at ``path`` (see the module docstring);
    written in slices of a few MB (bounded memory), under a temporary name then renamed."""
    from mambaseq.core.atomic import atomic_file

    shares = np.array(HG38_MB) / sum(HG38_MB)
    lengths = np.maximum((shares * size).astype(np.int64), 10 * LINE)
    names = [f"chr{i}" for i in range(1, 23)] + ["chrX", "chrY"]
    letters = np.frombuffer(b"ACGTacgtNN", np.uint8)
    rng = np.random.default_rng(seed)
    slab = LINE * (1 << 16)                                   # bases written at a time
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        for name, length in zip(names, lengths):
            f.write(f">{name}\n".encode())
            mid, gap = length // 2, max(length // 50, 1)      # a 2% "centromere"
            telomere, hole = min(10_000, length // 100), min(50_000, length // 100)
            n_runs = [(0, telomere), (length - telomere, length), (mid - gap // 2, mid + gap // 2)]
            n_runs += [(s, s + hole) for s in rng.integers(0, length, 3)]
            soft = False
            next_flip = int(rng.integers(300, 6000))
            for lo in range(0, length, slab):
                hi = min(lo + slab, length)
                bases = rng.integers(0, 4, hi - lo, dtype=np.uint8)
                # soft-masked stretches: flip the case every 0.3-6 kb (half the bases)
                case = np.zeros(hi - lo, np.uint8)
                pos = lo
                while pos < hi:
                    end = min(next_flip, hi)
                    if soft:
                        case[pos - lo:end - lo] = 4
                    pos = end
                    if end == next_flip:
                        soft, next_flip = not soft, next_flip + int(rng.integers(300, 6000))
                seq = letters[bases + case]
                for a, b in n_runs:
                    if a < hi and b > lo:
                        seq[max(a, lo) - lo:min(b, hi) - lo] = ord("N")
                n_full = len(seq) // LINE
                lines = np.empty((n_full, LINE + 1), np.uint8)
                lines[:, :LINE] = seq[:n_full * LINE].reshape(n_full, LINE)
                lines[:, LINE] = ord("\n")
                f.write(lines.tobytes())
                if len(seq) % LINE:
                    f.write(seq[n_full * LINE:].tobytes() + b"\n")
    return path


def _open(path: Path):
    from mambaseq.mamba_bio.datasets import GenomeWindows, split_regions
    from mambaseq.mamba_bio.fasta import Genome

    genome = Genome(path)
    return GenomeWindows(genome, split_regions(genome)["train"], max_n_frac=0.1)


def case_first_use(path: Path) -> dict:
    """Index + encoding from an empty cache (the caller points MAMBASEQ_CACHE_DIR at it)."""
    from mambaseq.mamba_bio.fasta import Genome
    from mambaseq.mamba_bio.token_cache import TokenCache

    t0 = time.perf_counter()
    genome = Genome(path)
    t_index = time.perf_counter() - t0
    TokenCache.open(genome)
    return {"first_use_s": time.perf_counter() - t0, "index_s": t_index,
            "encode_s": time.perf_counter() - t0 - t_index, "peak_rss_gb": peak_rss_gb()}


def case_batches(path: Path, batches: int) -> dict:
    """tokens/s of each window x batch case, and the peak RSS of the process."""
    data = _open(path)
    rows = []
    for window, batch in CASES:
        data.get_batch(0, window, batch)                          # warm-up
        n = max(batches * 64 * 1024 // (window * batch), 10)      # same tokens for each case
        t0 = time.perf_counter()
        for step in range(1, n + 1):
            data.get_batch(step, window, batch)
        dt = time.perf_counter() - t0
        rows.append({"window": window, "batch": batch, "batches": n,
                     "ms_per_batch": dt / n * 1e3, "tokens_per_s": n * window * batch / dt})
    return {"cases": rows, "peak_rss_gb": peak_rss_gb()}


def case_stub(path: Path, steps: int) -> dict:
    """A loop whose model step is a ``STEP_S`` sleep, its batches from the training loop's
    Prefetcher (as ``pipelines.training.loop.train`` gets them)."""
    from mambaseq.pipelines.training.loop import PREFETCH_STEPS, Prefetcher

    data = _open(path)
    keys = [(i, 1024, 64, 0, 1) for i in range(steps)]
    slept = 0.0
    with Prefetcher(data.get_batch, keys, depth=PREFETCH_STEPS) as batches:
        batches.next(keys[0])                                     # the first batch is built cold
        t0 = time.perf_counter()
        for key in keys[1:]:
            batches.next(key)
            s = time.perf_counter()
            time.sleep(STEP_S)
            slept += time.perf_counter() - s
        wall = time.perf_counter() - t0
        waited = batches.wait_s
    return {"stub_busy": slept / wall, "steps": steps - 1, "step_s": STEP_S,
            "data_wait_s_per_step": waited / len(keys), "peak_rss_gb": peak_rss_gb()}


def case_audio(folder: Path, batches: int) -> dict:
    """Crops per second from 64 one-second clips at 16 kHz (read through the audio cache)."""
    from mambaseq.mamba_audio.datasets import AudioClips
    from mambaseq.mamba_audio.synth import write_demo_corpus

    corpus = folder / "audio"
    if not corpus.is_dir():
        write_demo_corpus(corpus, n_speakers=4, clips_per_speaker=16, seconds=1.0,
                          sample_rate=16000)
    files = sorted(corpus.rglob("*.wav"))
    t0 = time.perf_counter()
    clips = AudioClips.from_files(files, sample_rate=16000, progress=False)
    t_load = time.perf_counter() - t0
    clips.crops(0, 4096, 16)
    t0 = time.perf_counter()
    for step in range(1, batches + 1):
        clips.crops(step, 4096, 16)
    dt = time.perf_counter() - t0
    return {"clips": len(files), "load_s": t_load, "crops_per_s": batches * 16 / dt,
            "crop": 4097, "batch": 16}


def _single(case: str, where: str, batches: int) -> dict:
    path = Path(where)
    return {"first_use": lambda: case_first_use(path),
            "batches": lambda: case_batches(path, batches),
            "stub": lambda: case_stub(path, batches),
            "audio": lambda: case_audio(path, batches)}[case]()


def run(args):
    folder = Path(args.genome_dir) if args.genome_dir else None
    if folder is None:
        from mambaseq.kernels.cpu_build import cache_root
        folder = cache_root() / "bench-data"
    folder.mkdir(parents=True, exist_ok=True)
    cache = folder / "cache"                       # the children's index and token caches
    sizes = {"full": args.size, "small": args.size / args.small}
    paths = {}
    for key, size in sizes.items():
        paths[key] = genome_path(folder, size)
        if not paths[key].exists():
            t0 = time.perf_counter()
            write_genome(paths[key], size)
            print(f"bench data: wrote {paths[key]} in {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr)
    shutil.rmtree(cache, ignore_errors=True)

    def child(case, path):
        return run_isolated("mambaseq.bench.data", ["--single", case, path, "--batches",
                                                    args.batches, "--cache-dir", cache])
    first = child("first_use", paths["full"])
    child("first_use", paths["small"])
    full = child("batches", paths["full"])
    small = child("batches", paths["small"])
    stub = child("stub", paths["full"])
    audio = child("audio", folder)
    meta = machine_info("cpu")
    meta["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS")
    by_shape = {(c["window"], c["batch"]): c for c in full["cases"]}
    checks = {
        "tokens_per_s_1k": by_shape[1024, 64]["tokens_per_s"] >= TARGETS["tokens_per_s_1k"],
        "tokens_per_s_128k": by_shape[131072, 2]["tokens_per_s"]
        >= TARGETS["tokens_per_s_128k"],
        "stub_busy": stub["stub_busy"] >= TARGETS["stub_busy"],
        "first_use_s": first["first_use_s"] <= TARGETS["first_use_s"],
        "rss_flat": full["peak_rss_gb"] <= small["peak_rss_gb"] * 1.1 + 0.05}
    result = dict(meta=meta, size=args.size, genome=str(paths["full"]),
                  genome_bytes=paths["full"].stat().st_size, first_use=first,
                  batches=full, batches_small={"size": sizes["small"], **small}, stub=stub,
                  audio=audio, targets=TARGETS, met=checks)
    rows = [[c["window"], c["batch"], f"{c['tokens_per_s'] / 1e6:.1f} M",
             f"{c['ms_per_batch']:.2f}", fmt(full["peak_rss_gb"]),
             f"{s['tokens_per_s'] / 1e6:.1f} M", fmt(small["peak_rss_gb"])]
            for c, s in zip(full["cases"], small["cases"])]
    md = "\n".join([
        f"### Data loading: a {args.size / 1e9:.2g} Gb hg38-shaped genome "
        f"({result['genome_bytes'] / 2 ** 30:.2f} GiB FASTA)", "",
        markdown_table(["window", "batch", "tokens/s", "ms/batch", "peak RSS GiB",
                        f"tokens/s at {sizes['small'] / 1e9:.2g} Gb",
                        f"peak RSS GiB at {sizes['small'] / 1e9:.2g} Gb"], rows), "",
        markdown_table(["case", "figure", "target", "met"], [
            ["first use (index + encoding)", f"{first['first_use_s']:.0f} s (index "
             f"{first['index_s']:.0f} s, encoding {first['encode_s']:.0f} s), peak RSS "
             f"{first['peak_rss_gb']:.2f} GiB", "<= 180 s", checks["first_use_s"]],
            ["1 kb x 64", f"{by_shape[1024, 64]['tokens_per_s'] / 1e6:.1f} M tokens/s",
             ">= 50 M", checks["tokens_per_s_1k"]],
            ["128 kb x 2", f"{by_shape[131072, 2]['tokens_per_s'] / 1e6:.0f} M tokens/s",
             ">= 200 M", checks["tokens_per_s_128k"]],
            ["stub_busy (5 ms step, 64 x 1 kb, prefetched)", f"{stub['stub_busy']:.3f} "
             f"(wait {stub['data_wait_s_per_step'] * 1e3:.3f} ms/step)", ">= 0.95",
             checks["stub_busy"]],
            ["peak RSS, full vs small genome", f"{full['peak_rss_gb']:.2f} vs "
             f"{small['peak_rss_gb']:.2f} GiB", "flat", checks["rss_flat"]],
            ["audio crops (4097 x 16, 16 kHz)", f"{audio['crops_per_s']:.0f} crops/s", "-",
             "-"]]), "",
        f"Command: `OMP_NUM_THREADS={meta['omp_num_threads']} mambaseq bench data --size "
        f"{args.size:g} --out {args.out}`.", machine_line(meta)])
    write_results(args.out, "data", result, md)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(md)
    return result


def add_arguments(p):
    p.add_argument("--size", type=float, default=3.1e9, help="bases of the generated genome")
    p.add_argument("--small", type=float, default=8.0,
                   help="the second genome is this many times smaller (RSS check)")
    p.add_argument("--batches", type=int, default=1000,
                   help="1 kb x 64 batches timed (the other cases as many tokens)")
    p.add_argument("--genome-dir", default=None,
                   help="where the genomes are written (default $MAMBASEQ_CACHE_DIR/bench-data)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the JSON here")
    p.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)   # of a --single case


def main(argv=None):
    args = bench_parser(__doc__, add_arguments, single_metavar=("CASE", "PATH")).parse_args(argv)
    if args.single:
        os.environ["MAMBASEQ_CACHE_DIR"] = args.cache_dir
        print(json.dumps(_single(*args.single, args.batches)))
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
