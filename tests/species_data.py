"""Shared by the genomics pipeline tests: the options of a tiny model and three simulated
species (a and b close relatives, c distant)."""
from mambaseq.mamba_bio.simulate import simulate_genomes, write_species_fastas

TINY = ["--d-model", "8", "--n-layer", "1", "--d-state", "4", "--batch-size", "2",
        "--warmup-steps", "1", "--log-every", "1"]


def simulated_species(folder, length=1500, seed=4):
    """Species a, b, c of two chromosomes of ``length`` bases each, one FASTA per species
    written in ``folder``. Returns (genomes {name: [chromosome str]}, fastas {name: path})."""
    genomes = simulate_genomes("((a:0.02,b:0.02):0.1,c:0.1);", length=length,
                               n_chromosomes=2, seed=seed)
    return genomes, write_species_fastas(folder, genomes)
