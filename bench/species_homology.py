"""Does a species split hand the classifier a sister species' copy of its test genes?

    python -m mambaseq.bench.species_homology --split-bed runs/bact6/seed0/split.bed \
        [--model runs/bact6/seed0/model] [--k 16] [--tile 1000] [--out bench/results/species]

Reads the split BED of a classify-species run (``OUT/split.bed``, or ``OUT/seedS/split.bed``)
and cuts every species' test regions into non-overlapping tiles. For each tile it counts the
tile's canonical k-mers (a k-mer and its reverse complement count as one) that also occur in
each species' training regions. A tile that shares many k-mers with another species'
training regions and few with its own is a gene whose sister-species copy the classifier was
trained on under the other label: sequence memory points to the wrong species, and only a
genome-wide signal (composition, codon usage) can still call the tile right.

Writes ``species_homology.json`` and ``species_homology.md``: per species the number of
tiles, the median shared k-mers with each species' training regions, and the share of tiles
with a homolog (at least ``--min-shared`` shared k-mers; a few are shared by chance or by
low-complexity sequence) in another species' training regions and in their own. With
``--model`` (a classifier of the same species, e.g. the run's own), also the classifier's
accuracy on the tiles with such a homolog and on the others: whether memory of the other
species' copy is what it gets wrong.
"""
from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from mambaseq.bench.report import machine_info, markdown_table, write_results
from mambaseq.mamba_bio.bed import read_split_bed
from mambaseq.mamba_bio.fasta import open_sequences
from mambaseq.mamba_bio.metrics import sorted_lookup
from mambaseq.mamba_bio.predict import load_classifier, window_probabilities
from mambaseq.mamba_bio.tokenizers import CharTokenizer, kmer_index

_TOKENIZER = CharTokenizer()
_FIRST_BASE = _TOKENIZER.encode_numpy("A")[0]            # A C G T are consecutive ids


def canonical_kmers(seq: str, k: int) -> np.ndarray:
    """The canonical k-mer indices (int64, k <= 31) of every window of ``seq`` of k bases
    without an N: min(index of the k-mer, index of its reverse complement)."""
    base = _TOKENIZER.encode_numpy(seq).astype(np.int64) - _FIRST_BASE   # A0 C1 G2 T3, else N
    forward = kmer_index(base, k)
    complement = np.where((base >= 0) & (base <= 3), 3 - base, base)
    reverse = kmer_index(complement[::-1], k)[::-1]      # the RC of the k-mer at each start
    return np.minimum(forward, reverse)[forward >= 0]


def shared_counts(query: np.ndarray, sorted_set: np.ndarray) -> int:
    """How many entries of ``query`` occur in ``sorted_set`` (sorted, unique)."""
    return int(sorted_lookup(sorted_set, query)[1].sum())


def split_sequences(split_bed) -> tuple[list[str], dict, dict]:
    """(species in file order, {species: [train region sequences]}, {species: [test ...]})."""
    regions = read_split_bed(split_bed)
    sources, train, test, species = {}, defaultdict(list), defaultdict(list), []
    for r in regions:
        if r.species not in species:
            species.append(r.species)
        source = sources.setdefault(r.fasta, open_sequences(r.fasta))
        w = r.window
        if r.split in ("train", "test"):
            (train if r.split == "train" else test)[r.species].append(
                source.fetch(w.name, w.start, w.end))
    return species, train, test


def homology_table(split_bed, k: int = 16, tile: int = 1000, min_shared: int = 50,
                   model_dir=None) -> dict:
    """Per species: tiles, median k-mers shared with each species' training regions, and the
    shares of tiles sharing at least ``min_shared`` k-mers with another species' training
    regions (``homolog_in_other``) and with their own (``homolog_in_own``). With
    ``model_dir`` (a classifier folder whose classes are these species), also its accuracy
    on the tiles with a homolog in another species' training regions and on the rest
    (``accuracy_homolog_in_other``, ``accuracy_rest``; None where there is no such tile)."""
    species, train, test = split_sequences(split_bed)
    train_sets = {s: np.unique(np.concatenate([canonical_kmers(x, k) for x in train[s]]
                                              or [np.zeros(0, np.int64)]))
                  for s in species}
    classifier = load_classifier(model_dir) if model_dir else None
    if classifier and sorted(classifier[2]) != sorted(species):
        raise ValueError(f"{model_dir}: its classes {classifier[2]} are not the species of "
                         f"{split_bed} ({species})")
    rows = {}
    for s in species:
        tiles = [seq[t:t + tile] for seq in test[s] for t in range(0, len(seq) - tile + 1, tile)]
        if not tiles:
            rows[s] = {"tiles": 0}
            continue
        counts = np.array([[shared_counts(canonical_kmers(x, k), train_sets[o]) for o in species]
                           for x in tiles])
        own = counts[:, species.index(s)]
        in_other = np.delete(counts, species.index(s), axis=1).max(1, initial=0) >= min_shared
        rows[s] = {"tiles": len(counts),
                   "median_shared": {o: float(np.median(counts[:, i]))
                                     for i, o in enumerate(species)},
                   "homolog_in_other": float(in_other.mean()),
                   "homolog_in_own": float((own >= min_shared).mean())}
        if classifier:
            model, tokenizer, classes = classifier
            right = window_probabilities(model, tokenizer, tiles).argmax(1) == classes.index(s)
            rows[s].update({"accuracy_homolog_in_other": _mean_or_none(right[in_other]),
                            "accuracy_rest": _mean_or_none(right[~in_other])})
    return {"split_bed": str(split_bed), "k": k, "tile": tile, "min_shared": min_shared,
            "model": None if model_dir is None else str(model_dir), "species": species,
            "rows": rows}


def _mean_or_none(flags: np.ndarray) -> float | None:
    return float(flags.mean()) if len(flags) else None


def to_markdown(table: dict) -> str:
    species = table["species"]
    short = [s.split("_")[0][:5] + ". " + s.split("_")[1][:6] if "_" in s else s
             for s in species]
    scored = table["model"] is not None
    header = ["test tiles of", "tiles", *[f"median shared: {n}" for n in short],
              "homolog in another's training", "homolog in its own training",
              *(["accuracy: tiles with a homolog in another's", "the other tiles"]
                if scored else [])]
    pct = lambda x: "" if x is None else f"{x:.0%}"                   # noqa: E731
    rows = []
    for s in species:
        r = table["rows"][s]
        if not r["tiles"]:
            rows.append([s, 0, *[""] * (len(header) - 2)])
            continue
        rows.append([s, r["tiles"], *[f"{r['median_shared'][o]:.0f}" for o in species],
                     pct(r["homolog_in_other"]), pct(r["homolog_in_own"]),
                     *([pct(r["accuracy_homolog_in_other"]), pct(r["accuracy_rest"])]
                       if scored else [])])
    return (f"Canonical {table['k']}-mers of {table['tile']}-base test tiles found in each "
            f"species' training regions ({table['split_bed']}); a homolog: at least "
            f"{table['min_shared']} shared k-mers"
            + (f"; accuracy of {table['model']}" if scored else "") + ".\n\n"
            + markdown_table(header, rows) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--split-bed", required=True, help="OUT/split.bed of a classify-species run")
    p.add_argument("--model", default=None, metavar="DIR",
                   help="also score the test tiles with this classifier folder (e.g. the "
                        "run's OUT/model), split by whether a tile has a homolog elsewhere")
    p.add_argument("--k", type=int, default=16, help="k-mer length (at most 31)")
    p.add_argument("--tile", type=int, default=1000, help="test tile length in bases")
    p.add_argument("--min-shared", type=int, default=50,
                   help="shared k-mers that make a tile's homolog (chance alone shares a few)")
    p.add_argument("--out", default="bench/results/species")
    args = p.parse_args(argv)
    table = {**homology_table(args.split_bed, args.k, args.tile, args.min_shared, args.model),
             "machine": machine_info()}
    markdown = to_markdown(table)
    json_path, _ = write_results(args.out, "species_homology", table, markdown)
    print(markdown + f"\n-> {json_path}")


if __name__ == "__main__":
    main()
