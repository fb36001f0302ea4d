"""pretrain-genome: causal (Mamba paper) or masked (Caduceus) language model on a FASTA.

    mambaseq pretrain-genome --fasta chr20.fa --objective clm --seq-len 1024 --steps 2000 \
        --out runs/chr20
"""
import json

from mambaseq.pipelines.genome import PretrainGenomeConfig, pretrain_genome

HELP = "pretrain a causal (clm) or masked (mlm) Mamba language model on a genome FASTA"
CONFIG = PretrainGenomeConfig


def run(config: PretrainGenomeConfig) -> None:
    print(json.dumps(pretrain_genome(config).summary(), indent=2))
