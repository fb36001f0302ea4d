"""classify-species: which species does a window of DNA come from?

    mambaseq classify-species --species human=hs.fa chimp=pt.fa,pt2.fa ... \
        --seq-len 1000 --steps 1000 --out runs/species [--folds K | --seeds S ...] \
        [--pretrain-steps N | --init-from DIR] [--eval-lengths L ...]

Trains a classifier on region-disjoint splits and writes OUT/report.json (test accuracy,
per-class F1, confusion matrix, beside a k-mer baseline on the same windows) and
OUT/confusion.png (``pipelines.species.train_species_classifier``). Prints the headline
figures as JSON.
"""
import json

from mambaseq.pipelines.species import ClassifySpeciesConfig, train_species_classifier

HELP = "train a species classifier on DNA windows, with a k-mer baseline in the same report"
CONFIG = ClassifySpeciesConfig


def run(config: ClassifySpeciesConfig) -> None:
    result = train_species_classifier(config)
    if result.report:                       # empty on the torchrun processes that write nothing
        print(json.dumps(result.summary(), indent=2))
