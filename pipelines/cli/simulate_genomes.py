"""simulate-genomes: genomes evolved along a tree, one FASTA per species (no downloads).

    mambaseq simulate-genomes --out data/sim --length 20000 --chromosomes 2 \
        --composition-sd 1.0 --repeat-fraction 0.3
"""
from mambaseq.pipelines.genome import SimulateGenomesConfig, simulate_genome_fastas

HELP = "simulate genomes along a tree (one FASTA per species) to try the toolkit on"
CONFIG = SimulateGenomesConfig


def run(config: SimulateGenomesConfig) -> None:
    for name, path in simulate_genome_fastas(config).items():
        print(f"{name}\t{path}")
