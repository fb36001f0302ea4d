"""Are the toolkit's DNA embeddings worth using for binning? Tiles of held-out regions grouped
by genome, beside tetranucleotide frequencies (TNF) and 6-mer profiles on the very same tiles.

    python -m mambaseq.bench.embedding_binning --split-bed runs/sup/split.bed \
        --model supervised=runs/sup/model --model clm=runs/clm/model \
        [--data ../shared/data/dna/bacteria] [--windows 1000 4000 16000] [--split test] \
        [--memory-fasta genome.fa] [--out bench/results/embeddings]

Genomes: every FASTA file of ``--data`` (one genome each, named by the file's stem). The
genomes of ``--split-bed`` (the split.bed of the classify-species or pretrain-genome run the
models were trained on; give every model's own run the same split) are the *seen* genomes:
their train/val/test regions are those of the file. Every other genome is *unseen*: no model
read any of it; it is cut by the same rule (``split_regions`` by position, ``--fractions``).

For each tile length W: non-overlapping tiles of W bases inside the ``--split`` regions (val
to choose models, test to report) are the queries; tiles of the train regions of the same
genomes are the references (at most ``--queries`` and ``--references`` tiles per genome,
drawn at random with ``--seed``; a region shorter than W gives none). Per set (seen, unseen)
and method (each model's mean-pooled tile vectors, TNF, 6-mer profile), every feature
standardised on the references: (a) kNN species accuracy (cosine, k = ``--k``, references of
the set's genomes), (b) adjusted Rand index of k-means with k = the set's genome count. A PCA
picture of the query tiles of all genomes at ``--picture-window`` compares the first model
with TNF. With ``--memory-fasta`` the first model embeds that whole file in tiles of
``--memory-window`` bases through the ``embed`` job in a fresh process: wall time and peak RSS.

Writes ``binning_<split>.json``, ``binning_<split>.md`` and ``pca_<split>.png`` in ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mambaseq.bench.report import (machine_info, markdown_table, peak_rss_gb, run_isolated,
                                   write_results)
from mambaseq.mamba_bio.bed import read_split_bed
from mambaseq.mamba_bio.composition import profiles
from mambaseq.mamba_bio.datasets import split_regions
from mambaseq.mamba_bio.embeddings import (binning_scores, embed_tiles_source, plot_tile_pca,
                                           standardize, tile_spans)
from mambaseq.mamba_bio.fasta import open_sequences
from mambaseq.mamba_bio.tokenizers import CharTokenizer
from mambaseq.pipelines import EmbedConfig, embed
from mambaseq.pipelines.training import load_model

FASTA_SUFFIXES = (".fa", ".fasta", ".fna", ".fa.gz", ".fasta.gz", ".fna.gz")
COMPOSITION = {"TNF": 4, "6-mer": 6}         # baseline name -> k of its canonical profile


def genome_regions(data: Path, split_bed: Path, fractions) -> dict:
    """genome name -> {"fasta", "seen", "train", "val", "test": [(record, start, end)]}."""
    files = sorted(p for p in data.iterdir() if p.name.endswith(FASTA_SUFFIXES))
    if not files:
        raise SystemExit(f"--data {data}: no FASTA files (.fa, .fasta, .fna) there")
    rows = read_split_bed(split_bed)
    by_fasta = {str(Path(r.fasta).resolve()) for r in rows}
    genomes = {}
    for path in files:
        name = path.name.split(".")[0]
        seen = str(path.resolve()) in by_fasta
        if seen:
            mine = [r for r in rows if str(Path(r.fasta).resolve()) == str(path.resolve())]
            parts = {s: [(r.window.name, r.window.start, r.window.end) for r in mine
                         if r.split == s] for s in ("train", "val", "test")}
        else:
            split = split_regions(open_sequences(path), fractions, by="position")
            parts = {s: [(w.name, w.start, w.end) for w in ws] for s, ws in split.items()}
        genomes[name] = {"fasta": path, "seen": seen, **parts}
    missing = by_fasta - {str(g["fasta"].resolve()) for g in genomes.values()}
    if missing:
        raise SystemExit(f"--split-bed names FASTA files not in --data: {sorted(missing)}")
    return genomes


def sample_tiles(source, regions, window: int, limit: int, rng) -> list[tuple]:
    """At most ``limit`` non-overlapping whole tiles of ``window`` bases inside ``regions``,
    drawn at random, in genome order."""
    spans = [t for t in tile_spans(source, window, window,
                                   [r for r in regions if r[2] - r[1] >= window])
             if t[2] - t[1] == window]
    if len(spans) > limit:
        spans = [spans[i] for i in sorted(rng.choice(len(spans), limit, replace=False))]
    return spans


def tile_features(genomes, models, window, split, limits, seed, both_strands):
    """Per method, the (n, F) vectors of the reference and query tiles, with their genome
    labels and set ("seen"/"unseen")."""
    rng = np.random.default_rng(seed)
    tiles = {"reference": [], "query": []}               # (genome, source, spans)
    for name, g in genomes.items():
        source = open_sequences(g["fasta"])
        tiles["reference"].append((name, source, sample_tiles(source, g["train"], window,
                                                              limits[0], rng)))
        tiles["query"].append((name, source, sample_tiles(source, g[split], window,
                                                          limits[1], rng)))
    out = {}
    for role, parts in tiles.items():
        labels = np.array([n for n, _, spans in parts for _ in spans])
        seen = np.array([genomes[n]["seen"] for n in labels], dtype=bool)
        vectors = {}
        for method, k in COMPOSITION.items():
            vectors[method] = np.concatenate([profiles([s.fetch(*t) for t in spans], k)
                                              for _, s, spans in parts])
        for method, (model, tokenizer) in models.items():
            vectors[method] = np.concatenate([
                embed_tiles_source(model, tokenizer, s, window, label=str(genomes[n]["fasta"]),
                                   regions=spans, both_strands=both_strands).vectors
                for n, s, spans in parts])
        out[role] = {"labels": labels, "seen": seen, "vectors": vectors}
    return out


def score_window(features, k, seed) -> dict:
    """{set: {method: {"knn_accuracy", "ari", "queries", "references"}}} for one window."""
    ref, query = features["reference"], features["query"]
    result = {}
    for set_name, flag in (("seen", True), ("unseen", False)):
        r, q = ref["seen"] == flag, query["seen"] == flag
        if not q.any():
            continue
        result[set_name] = {}
        for method in ref["vectors"]:
            x_ref, x_query = standardize(ref["vectors"][method][r],
                                         query["vectors"][method][q])
            result[set_name][method] = {
                **binning_scores(x_ref, ref["labels"][r], x_query, query["labels"][q], k=k,
                                 seed=seed),
                "queries": int(q.sum()), "references": int(r.sum())}
    return result


def memory_run(model_dir: str, fasta: str, window: int) -> dict:
    """Embed ``fasta`` in tiles through the embed job (in this process): time, peak RSS."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        start, cpu = time.perf_counter(), time.process_time()
        result = embed(EmbedConfig(model=model_dir, fasta=fasta, out=f"{tmp}/e.npz",
                                   window=window))
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    bases = sum(open_sequences(fasta).lengths.values())
    return {"fasta": fasta, "window": window, "bases": bases, "tiles": result.tiles,
            "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
            "peak_rss_gb": round(peak_rss_gb(), 3)}


def to_markdown(table: dict) -> str:
    methods = list(next(iter(next(iter(table["results"].values())).values())))
    sets = list(next(iter(table["results"].values())))
    header = ["tile", "method"] + [f"{s} {m}" for s in sets for m in ("kNN acc", "ARI")]
    rows = [[f"{int(w) / 1000:g} kb", method] +
            [x for s in sets for x in (table["results"][w][s][method]["knn_accuracy"],
                                       table["results"][w][s][method]["ari"])]
            for w in table["results"] for method in methods]
    n = {s: next(iter(next(iter(table["results"].values()))[s].values())) for s in sets}
    lines = [f"# Tile embeddings vs composition: binning on {table['split']} regions", "",
             markdown_table(header, rows), "",
             "; ".join(f"{s}: {table['genomes'][s]} ({n[s]['queries']} query / "
                       f"{n[s]['references']} reference tiles at the first length)"
                       for s in sets) + ".",
             f"kNN: cosine, k = {table['k']}, references = tiles of the same genomes' train "
             "regions; ARI: k-means, k = number of genomes; features standardised on the "
             "references.", f"Models: {table['models']}."]
    if "memory" in table:
        m = table["memory"]
        lines.append(f"Embedding {m['fasta']} ({m['bases'] / 1e6:.1f} Mb, {m['tiles']} tiles of "
                     f"{m['window']} bases, one thread, the embed job in its own process): "
                     f"{m['seconds']} s wall, {m['cpu_seconds']} s CPU, peak RSS "
                     f"{m['peak_rss_gb']} GB.")
    lines.append(f"Command: {table['command']}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--split-bed", default=None,
                   help="split.bed of the run the models were trained on (its genomes: seen)")
    p.add_argument("--model", action="append", default=[], metavar="NAME=DIR",
                   help="a model folder to embed with (repeat for several)")
    p.add_argument("--data", default="../shared/data/dna/bacteria",
                   help="folder of genome FASTA files, one genome per file")
    p.add_argument("--windows", type=int, nargs="+", default=[1000, 4000, 16000])
    p.add_argument("--split", choices=("val", "test"), default="test",
                   help="query tiles from these regions (val: choose models; test: report)")
    p.add_argument("--fractions", type=float, nargs=3, default=[0.8, 0.1, 0.1],
                   help="train/val/test shares cutting the unseen genomes (by position)")
    p.add_argument("--references", type=int, default=400_000,
                   help="reference bases per genome and tile length (tiles = this // W)")
    p.add_argument("--queries", type=int, default=200_000,
                   help="query bases per genome and tile length (tiles = this // W, at most "
                        "--max-tiles)")
    p.add_argument("--max-tiles", type=int, default=60, help="cap on tiles per genome and role")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--both-strands", action="store_true",
                   help="average each tile's vector with its reverse complement's")
    p.add_argument("--picture-window", type=int, default=4000)
    p.add_argument("--memory-fasta", default=None,
                   help="also time embedding this whole FASTA in tiles with the first model")
    p.add_argument("--memory-window", type=int, default=4000)
    p.add_argument("--memory-single", nargs=3, metavar=("MODEL", "FASTA", "W"),
                   help="only embed FASTA in tiles of W bases with MODEL through the embed "
                        "job and print its time and peak RSS as JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results/embeddings")
    args = p.parse_args(argv)
    if args.memory_single:
        model_dir, fasta, window = args.memory_single
        print(json.dumps(memory_run(model_dir, fasta, int(window))))
        return
    if args.split_bed is None:
        p.error("--split-bed is required")
    torch.set_num_threads(1)
    named = dict(item.split("=", 1) for item in args.model)
    models = {}
    for name, folder in named.items():
        model = load_model(folder)
        models[name] = (model.eval(), CharTokenizer.load(folder))
    genomes = genome_regions(Path(args.data), Path(args.split_bed), args.fractions)
    results, picture = {}, None
    for window in args.windows:
        limits = [min(args.max_tiles, max(1, n // window))
                  for n in (args.references, args.queries)]
        start = time.perf_counter()
        features = tile_features(genomes, models, window, args.split, limits, args.seed,
                                 args.both_strands)
        results[str(window)] = score_window(features, args.k, args.seed)
        print(f"{window} bases: {time.perf_counter() - start:.0f} s", file=sys.stderr)
        if window == args.picture_window:
            picture = features
    table = {"split": args.split, "k": args.k, "models": named,
             "genomes": {s: [n for n, g in genomes.items() if g["seen"] == (s == "seen")]
                         for s in ("seen", "unseen")},
             "results": results,
             "command": "python -m mambaseq.bench.embedding_binning "
                        + " ".join(argv if argv is not None else sys.argv[1:])}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if picture is not None:
        query = picture["query"]
        panels = {f"{name} (model)": query["vectors"][name] for name in list(models)[:1]}
        panels["TNF"] = query["vectors"]["TNF"]
        ref = picture["reference"]["vectors"]
        panels = {k: standardize(ref[k.removesuffix(" (model)")], v)[1]
                  for k, v in panels.items()}
        table["picture"] = str(plot_tile_pca(
            out / f"pca_{args.split}.png", panels, query["labels"],
            f"PCA of {args.picture_window}-base {args.split} tiles, coloured by genome"))
    if args.memory_fasta and models:
        table["memory"] = run_isolated("mambaseq.bench.embedding_binning", [
            "--memory-single", next(iter(named.values())), args.memory_fasta,
            args.memory_window])
    table["machine"] = machine_info()
    json_path, _ = write_results(out, f"binning_{args.split}", table, to_markdown(table))
    print(to_markdown(table) + f"\n-> {json_path}")


if __name__ == "__main__":
    main()
