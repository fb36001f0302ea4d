"""Why nearest-lineage methods fail on this split: for validation tiles of each lineage, the
share of their canonical 31-mers found in their own lineage's training regions and in the
best other lineage's, and the exact-k-mer baseline's accuracy (most shared) beside the
opposite rule (fewest shared; a symptom of the split, not a method). Validation regions only:

    python bench/results/species/close_lineages/kmer_share_validation.py runs/faecalis4 \
        > bench/results/species/close_lineages/kmer_share_validation.txt
"""
import json
import sys
from pathlib import Path

import numpy as np

from mambaseq.mamba_bio.datasets import SpeciesWindows
from mambaseq.mamba_bio.fasta import open_sequences
from mambaseq.mamba_bio.kmer_match import ExactKmerMatch, canonical_kmers
from mambaseq.mamba_bio.species import parse_species, region_sequences

config = json.loads((Path(sys.argv[1]) / "config.json").read_text())
species = {name: [open_sequences(f) for f in files]
           for name, files in parse_species(config["species"]).items()}
data = SpeciesWindows(species, fractions=config["fractions"], by=config["split_by"])
match = ExactKmerMatch(k=31).fit(region_sequences(data, "train"))
for length in (1024, 8192, 32768):
    x, y = data.tiled_windows("val", length, config["eval_per_class"])
    counts = match.shared_counts(x)                                       # (n, C)
    total = np.array([len(np.unique(canonical_kmers(w, 31))) for w in x])
    own = counts[np.arange(len(y)), y] / total
    other = np.where(np.eye(len(data.classes), dtype=bool)[y], -1, counts).max(1) / total
    print(f"val tiles of {length}: {len(y)}; exact 31-mer baseline (most shared) "
          f"{np.mean(match.predict(x) == y):.3f}, fewest shared "
          f"{np.mean(counts.argmin(1) == y):.3f}; "
          f"median share of a tile's 31-mers in its own lineage's training regions "
          f"{np.median(own):.3f}, in the best other lineage's {np.median(other):.3f}")
