"""Sequence composition profiles: the baselines DNA embeddings are measured against.

Tetranucleotide frequency (TNF) is the 136 canonical 4-mer frequencies of a sequence (a
4-mer and its reverse complement counted as one), the feature metagenomic binners (MetaBAT,
CONCOCT) start from; :func:`kmer_profile` gives the same for any k (6-mers: 2080 canonical
k-mers). Both are strand-independent: a sequence and its reverse complement give the same
profile. K-mers holding anything but A, C, G, T are not counted.

    tnf("ACGTTGCA...")                     # (136,) float64, sums to 1
    profiles(["ACGT...", "GGCA..."], k=6)  # (n, 2080) float32
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .tokenizers import KmerTokenizer


@lru_cache(maxsize=None)
def canonical_map(k: int) -> tuple[np.ndarray, int]:
    """(4^k,) int64: k-mer index (``tokenizers.kmer_index``, A C G T = 0..3) -> index of its canonical class
    (the k-mer or its reverse complement, whichever comes first), and the number of classes
    (136 for k = 4, 2080 for k = 6)."""
    index = np.arange(4 ** k, dtype=np.int64)
    rc = np.zeros_like(index)
    rest = index.copy()
    for _ in range(k):                       # read bases from the last, complement each
        rc = rc * 4 + (3 - rest % 4)
        rest //= 4
    canonical = np.minimum(index, rc)
    classes, dense = np.unique(canonical, return_inverse=True)
    return dense.astype(np.int64), len(classes)


def kmer_profile(seq: str, k: int = 4) -> np.ndarray:
    """(n_classes,) float64 canonical k-mer frequencies of ``seq`` (zeros when it holds no
    k-mer of A, C, G, T only)."""
    dense, n = canonical_map(k)
    counts = np.bincount(dense, weights=_counter(k).counts(seq), minlength=n)
    total = counts.sum()
    return counts / total if total else counts


@lru_cache(maxsize=None)
def _counter(k: int) -> KmerTokenizer:
    return KmerTokenizer(k, stride=1)


def tnf(seq: str) -> np.ndarray:
    """(136,) tetranucleotide frequencies of ``seq``, strand-independent."""
    return kmer_profile(seq, 4)


def profiles(seqs, k: int = 4) -> np.ndarray:
    """(n, n_classes) float32 canonical k-mer frequencies of each of ``seqs``."""
    return np.stack([kmer_profile(s, k) for s in seqs]).astype(np.float32)
