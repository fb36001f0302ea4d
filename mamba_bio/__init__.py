"""Genomics on top of ``core``: nucleotide tokenizers, FASTA/GenBank/BED loaders, window
datasets with region-disjoint splits, an evolutionary simulator, metrics and baselines.

Coordinates are 0-based and end-exclusive (BED style). Never imports ``mamba_audio``.
"""
from .bed import read_bed
from .datasets import GenomeWindows, SpeciesWindows, WindowSampler, mlm_mask, split_regions
from .fasta import Genome, Records, Window, iter_windows, n_fraction, open_sequences
from .metrics import (best_markov_perplexity, classification_report, kmer_baseline,
                      kmer_features, lm_metrics, markov_nll, plot_confusion)
from .simulate import simulate_genomes, write_fasta, write_species_fastas
from .tokenizers import CharTokenizer, KmerTokenizer, reverse_complement, reverse_complement_ids

__all__ = [
    "CharTokenizer", "KmerTokenizer", "reverse_complement", "reverse_complement_ids",
    "Genome", "Records", "Window", "open_sequences", "iter_windows", "n_fraction", "read_bed",
    "split_regions", "WindowSampler", "GenomeWindows", "SpeciesWindows", "mlm_mask",
    "simulate_genomes", "write_fasta", "write_species_fastas",
    "lm_metrics", "classification_report", "plot_confusion", "kmer_features", "kmer_baseline",
    "markov_nll", "best_markov_perplexity",
]
