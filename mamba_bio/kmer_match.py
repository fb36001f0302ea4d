"""Exact shared long k-mers: the strain-typing baseline (Kraken/Mash-like) for classifying
windows of DNA between close lineages.

Each class's training regions are indexed as the sorted set of their canonical k-mers (the
smaller of a k-mer's code and its reverse complement's, so that strand does not matter); a
window goes to the class whose set holds the most of the window's canonical k-mers. With
``unique`` only k-mers held by one class count (Kraken's lowest-common-ancestor rule cut to
one rank). A window that shares no counted k-mer with any class, or ties, is called by a
seeded random draw among the tied classes.

    match = ExactKmerMatch(k=31).fit([["ACGT...", ...], ...])   # per class, its training seqs
    shared = match.shared_counts(windows)                       # (n, C) k-mers in common
    pred = match.predict(windows)                               # (n,) labels

Memory: one int64 per distinct k-mer per class (3 Mb genomes: ~24 MB each).
"""
from __future__ import annotations

import numpy as np

from .metrics import sorted_lookup
from .tokenizers import CharTokenizer, kmer_index


def canonical_kmers(seq: str, k: int) -> np.ndarray:
    """(n,) int64 canonical codes of the k-mers of ``seq`` that hold no N (n <= len - k + 1):
    min(code of the k-mer, code of its reverse complement), 2 bits a base."""
    base = CharTokenizer().encode_numpy(seq).astype(np.int64) - 4      # A0 C1 G2 T3, N4+
    forward = kmer_index(base, k)
    # the reverse complement's k-mers, reversed so that position i is forward k-mer i's twin
    reverse = kmer_index(np.where((base >= 0) & (base <= 3), 3 - base, -1)[::-1], k)[::-1]
    keep = forward >= 0
    return np.minimum(forward, reverse)[keep]


class ExactKmerMatch:
    """Nearest class by exact shared canonical k-mers (see the module's docstring).

    Args:
        k (int, 21..31 typical; 1..31 allowed): k-mer length.
        unique (bool): count only k-mers found in the training regions of one class.
        seed (int): seeds the draw that breaks ties.
    """

    def __init__(self, k: int = 31, unique: bool = False, seed: int = 0):
        if not 1 <= k <= 31:
            raise ValueError(f"k must be in 1..31 (an int64 holds 31 bases), got {k}")
        self.k, self.unique, self.seed = k, unique, seed
        self.sets: list[np.ndarray] = []

    def fit(self, sequences_by_class: list[list[str]]) -> "ExactKmerMatch":
        """Index the training sequences of each class (a list per class, in label order)."""
        self.sets = [np.unique(np.concatenate([canonical_kmers(s, self.k) for s in seqs]
                                              or [np.zeros(0, np.int64)]))
                     for seqs in sequences_by_class]
        if self.unique:
            keys, holders = np.unique(np.concatenate(self.sets), return_counts=True)
            shared = keys[holders > 1]
            self.sets = [s[~np.isin(s, shared, assume_unique=True)] for s in self.sets]
        return self

    def shared_counts(self, windows: list[str]) -> np.ndarray:
        """(n, C) int64: how many of each window's distinct canonical k-mers each class's
        set holds."""
        if not self.sets:
            raise ValueError("ExactKmerMatch: call fit before scoring windows")
        counts = np.zeros((len(windows), len(self.sets)), dtype=np.int64)
        for i, window in enumerate(windows):
            query = np.unique(canonical_kmers(window, self.k))
            for c, keys in enumerate(self.sets):
                counts[i, c] = int(sorted_lookup(keys, query)[1].sum())
        return counts

    def predict(self, windows: list[str]) -> np.ndarray:
        """(n,) int64 labels: the class sharing the most k-mers; ties (a window sharing none
        included) drawn at random among the tied classes, seeded by ``seed``."""
        counts = self.shared_counts(windows)
        rng = np.random.default_rng(self.seed)
        tied = counts == counts.max(1, keepdims=True)                   # (n, C)
        return np.array([rng.choice(np.flatnonzero(row)) for row in tied], dtype=np.int64)
