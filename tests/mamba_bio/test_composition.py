"""Composition profiles (TNF, k-mer) and the binning figures (kNN accuracy, k-means ARI)."""
from itertools import product
from math import comb

import numpy as np

from mambaseq.mamba_bio.composition import canonical_map, kmer_profile, profiles, tnf
from mambaseq.mamba_bio.embeddings import binning_scores, standardize
from mambaseq.mamba_bio.tokenizers import reverse_complement


def random_dna(n, seed):
    return "".join(np.random.default_rng(seed).choice(list("ACGT"), n))


def test_tnf_is_strand_independent_with_136_canonical_tetranucleotides():
    seq = random_dna(3000, 0) + "NNNN" + random_dna(500, 1)
    profile = tnf(seq)
    assert profile.shape == (136,) and np.isclose(profile.sum(), 1.0)
    np.testing.assert_array_equal(profile, tnf(reverse_complement(seq)))
    six = kmer_profile(seq, 6)
    assert six.shape == (2080,)
    np.testing.assert_array_equal(six, kmer_profile(reverse_complement(seq), 6))
    # a plain 4-mer count would differ between the strands
    assert tnf("AAAAA")[canonical_map(4)[0][0]] == 1.0            # AAAA and TTTT are one class
    assert (tnf("AAAAA") == tnf("TTTTT")).all()
    # k-mers holding an N are not counted: ACGTNACGT has 2 tetranucleotides (ACGT twice)
    assert np.isclose(tnf("ACGTNACGT").max(), 1.0) and not tnf("NNNN").any()
    assert profiles(["ACGTACGT", "GGGGCCCC"], 4).shape == (2, 136)


def test_canonical_classes_pair_each_kmer_with_its_reverse_complement():
    dense, n = canonical_map(3)
    kmers = ["".join(p) for p in product("ACGT", repeat=3)]
    assert n == 32                                          # 64 3-mers, no palindromes
    for i, kmer in enumerate(kmers):
        assert dense[i] == dense[kmers.index(reverse_complement(kmer))]
    assert len({dense[kmers.index(k)] for k in ("AAA", "CCC", "ACA")}) == 3


def direct_knn_accuracy(ref, ref_y, query, query_y, k):
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)   # noqa: E731
    distance = 1 - unit(query) @ unit(ref).T                        # cosine
    right = 0
    for row, truth in zip(distance, query_y):
        votes = list(ref_y[np.argsort(row)[:k]])
        right += max(set(votes), key=votes.count) == truth
    return right / len(query_y)


def direct_ari(truth, clusters):
    pairs = lambda counts: sum(comb(int(c), 2) for c in counts)     # noqa: E731
    table = np.array([[np.sum((truth == a) & (clusters == b)) for b in set(clusters)]
                      for a in set(truth)])
    index, rows, cols = pairs(table.ravel()), pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * cols / comb(len(truth), 2)
    return (index - expected) / ((rows + cols) / 2 - expected)


def test_knn_accuracy_and_ari_equal_a_direct_computation_on_a_toy_set():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(40, 6))
    ref_y = np.array(["a", "b"] * 20)
    query = rng.normal(size=(25, 6)) + ref[:25] * 0.5
    query_y = np.array(["a", "b", "b", "a", "a"] * 5)
    scores = binning_scores(ref, ref_y, query, query_y, k=5)
    assert scores["knn_accuracy"] == direct_knn_accuracy(ref, ref_y, query, query_y, 5)
    assert 0 < scores["knn_accuracy"] < 1
    # three tight, well-apart clusters; labels disagree with them on one point in four
    centres = np.eye(3) * 10
    points = np.repeat(centres, 4, axis=0) + rng.normal(scale=0.01, size=(12, 3))
    labels = np.array(list("aaab" + "bbbc" + "ccca"))
    clusters = np.repeat([0, 1, 2], 4)                 # what k-means must find
    ari = binning_scores(points, labels, points, labels, k=1)["ari"]
    assert np.isclose(ari, direct_ari(labels, clusters)) and 0 < ari < 1


def test_standardize_uses_the_reference_statistics_only():
    ref, other = np.array([[0.0, 1.0], [2.0, 1.0]]), np.array([[4.0, 3.0]])
    z_ref, z_other = standardize(ref, other)
    np.testing.assert_allclose(z_ref, [[-1, 0], [1, 0]])
    np.testing.assert_allclose(z_other, [[3, 2]])              # constant feature: SD 1
