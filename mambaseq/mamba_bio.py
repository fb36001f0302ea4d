"""Genomics on top of ``core``: nucleotide tokenizers, FASTA/GenBank/BED loaders, window
datasets with region-disjoint splits, an evolutionary simulator, metrics and baselines.

Coordinates are 0-based and end-exclusive (BED style). Never imports ``mamba_audio``.
"""
from mambaseq import _layer_folder

__path__ = [_layer_folder(__spec__.name)]  # the layer's modules: see mambaseq/__init__.py

from mambaseq.mamba_bio.bed import read_bed
from mambaseq.mamba_bio.datasets import (GenomeWindows, PooledSampler, SpeciesWindows,
                                         WindowSampler, fold_ranges, mlm_mask, split_regions)
from mambaseq.mamba_bio.fasta import (Genome, Records, Window, iter_windows, n_fraction,
                                      open_sequences)
from mambaseq.mamba_bio.metrics import (best_markov_perplexity, classification_report,
                                        kmer_baseline, kmer_features, lm_metrics, markov_nll,
                                        plot_confusion)
from mambaseq.mamba_bio.token_cache import TokenCache
from mambaseq.mamba_bio.tokenizers import (CharTokenizer, KmerTokenizer, reverse_complement,
                                           reverse_complement_ids)

__all__ = [
    "CharTokenizer", "KmerTokenizer", "TokenCache", "reverse_complement", "reverse_complement_ids",
    "Genome", "Records", "Window", "open_sequences", "iter_windows", "n_fraction", "read_bed",
    "split_regions", "fold_ranges", "WindowSampler", "PooledSampler", "GenomeWindows",
    "SpeciesWindows", "mlm_mask",
    "simulate_genomes", "write_fasta", "write_species_fastas", "MaskedLM",
    "MaskedLMConfig",
    "lm_metrics", "classification_report", "plot_confusion", "kmer_features", "kmer_baseline",
    "markov_nll", "best_markov_perplexity",
]

_LAZY = {"simulate_genomes": "simulate", "write_fasta": "simulate",
         "write_species_fastas": "simulate", "MaskedLM": "heads",
         "MaskedLMConfig": "heads"}


def __getattr__(name):
    # Imported on first use: ``python -m mambaseq.mamba_bio.simulate`` must not find its module
    # already imported by the package, and the model heads pull in ``core``.
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
