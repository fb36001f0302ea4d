"""What the close-lineages classifiers read: their calls on the 32 kb test tiles split by
whether a tile holds an N (an assembly gap), and their accuracy once every N is replaced by
an A. A one-off diagnostic of a finished run (it trains nothing, tunes nothing):

    python bench/results/species/close_lineages/gap_diagnostic.py runs/faecalis4 \
        > bench/results/species/close_lineages/gap_diagnostic.txt

RUN is a ``classify-species --preset close-lineages --seeds 0 1`` folder (its config.json
names the FASTA files and the split; RUN/seedS/checkpoints/best is the scored model).
"""
import json
import sys
from pathlib import Path

import numpy as np

from mambaseq.mamba_bio.datasets import SpeciesWindows
from mambaseq.mamba_bio.fasta import open_sequences
from mambaseq.mamba_bio.predict import window_probabilities
from mambaseq.mamba_bio.species import parse_species
from mambaseq.mamba_bio.tokenizers import CharTokenizer
from mambaseq.pipelines.training import load_model

run = Path(sys.argv[1])
config = json.loads((run / "config.json").read_text())
species = {name: [open_sequences(f) for f in files]
           for name, files in parse_species(config["species"]).items()}
data = SpeciesWindows(species, fractions=config["fractions"], by=config["split_by"])
length = config["seq_len"]
x, y = data.tiled_windows("test", length, config["eval_per_class"])
has_n = np.array(["N" in w.upper() for w in x])
print(f"{length}-base test tiles: {len(x)}; with an N, per lineage "
      f"({', '.join(data.classes)}): {[round(float(has_n[y == c].mean()), 2) for c in range(4)]}")
for seed in config["seeds"]:
    model = load_model(run / f"seed{seed}" / "checkpoints" / "best")
    pred = window_probabilities(model, CharTokenizer(), x, config["eval_tokens"]).argmax(1)
    filled = window_probabilities(model, CharTokenizer(), [w.upper().replace("N", "A") for w in x],
                                  config["eval_tokens"]).argmax(1)
    print(f"seed {seed}: accuracy {np.mean(pred == y):.3f}; calls (per class) on tiles with an "
          f"N {np.bincount(pred[has_n], minlength=4).tolist()}, without "
          f"{np.bincount(pred[~has_n], minlength=4).tolist()}; every N replaced by A: accuracy "
          f"{np.mean(filled == y):.3f}, {np.mean(filled != pred):.2f} of the calls change")
