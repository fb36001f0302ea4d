"""predict-species: apply a trained species classifier to new FASTA files.

    mambaseq predict-species --model runs/species/model --fasta new.fa other.fa.gz \
        --out preds.tsv [--window 1000] [--stride 1000] [--batch-size 32] [--summary FILE]

Writes one row per window to ``--out`` (TSV: file, record, start, end, predicted, one
probability column per class) and one row per record to ``--summary`` (.tsv or .json;
default PREDS.summary.tsv beside ``--out``); see ``pipelines.species.predict_species``.
``--window`` defaults to the ``--seq-len`` the classifier was trained with.
"""
from mambaseq.pipelines.species import PredictSpeciesConfig, predict_species

HELP = "species calls for every window and record of new FASTA files, from a trained classifier"
CONFIG = PredictSpeciesConfig


def run(config: PredictSpeciesConfig) -> None:
    result = predict_species(config)
    print(f"{result.windows} windows of {len(result.records)} records -> {result.out}; "
          f"per record -> {result.summary}")
