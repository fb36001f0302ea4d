"""eval-genome: perplexity and bits per base of a causal genome LM on any FASTA.

    mambaseq eval-genome --model runs/chr20/model --fasta test.fa [--bed held_out.bed]

Prints one JSON object: {"perplexity", "bits_per_base", "tokens"}.
"""
import json

from mambaseq.pipelines.genome import EvalGenomeConfig, evaluate_genome

HELP = "perplexity and bits per base of a pretrained causal genome model on FASTA files"
CONFIG = EvalGenomeConfig


def run(config: EvalGenomeConfig) -> None:
    print(json.dumps(evaluate_genome(config)))
