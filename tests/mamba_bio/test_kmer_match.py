"""The exact-shared-k-mer baseline (mamba_bio.kmer_match): canonical k-mers, the call of a
window copied from a training region, strand independence, unique k-mers."""
import numpy as np
import pytest

from mambaseq.mamba_bio.kmer_match import ExactKmerMatch, canonical_kmers
from mambaseq.mamba_bio.tokenizers import reverse_complement


def _random(rng, n):
    return "".join(rng.choice(list("ACGT"), n))


def _code(kmer):
    return int("".join(str("ACGT".index(c)) for c in kmer), 4)


def test_canonical_kmers_match_a_brute_force_and_skip_n():
    seq = "ACGTTGCANNACGGTACCATG"
    k = 5
    expected = [min(_code(seq[i:i + k]), _code(reverse_complement(seq[i:i + k])))
                for i in range(len(seq) - k + 1) if "N" not in seq[i:i + k]]
    assert canonical_kmers(seq, k).tolist() == expected
    assert sorted(canonical_kmers(reverse_complement(seq), k).tolist()) == sorted(expected)


@pytest.fixture
def lineages():
    """Four 'lineages': a shared 3 kb core with 2% lineage-specific substitutions, plus 2 kb
    of sequence of their own; per lineage one training region."""
    rng = np.random.default_rng(0)
    core = np.array(list(_random(rng, 3000)))
    train = []
    for _ in range(4):
        mine = core.copy()
        hit = rng.random(len(mine)) < 0.02
        mine[hit] = rng.choice(list("ACGT"), hit.sum())
        train.append(["".join(mine) + _random(rng, 2000)])
    return train


@pytest.mark.parametrize("unique", [False, True])
def test_a_window_copied_from_a_training_region_goes_to_its_lineage(lineages, unique):
    match = ExactKmerMatch(k=21, unique=unique).fit(lineages)
    windows = [lineages[c][0][start:start + 800] for c in range(4) for start in (100, 3500)]
    assert match.predict(windows).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_the_call_is_strand_independent(lineages):
    match = ExactKmerMatch(k=31).fit(lineages)
    rng = np.random.default_rng(1)
    windows = [lineages[c][0][s:s + 600] for c in range(4) for s in rng.integers(0, 4400, 3)]
    # a window mutated at random: the counts are close, so a strand-dependent rule would show
    windows += ["".join(b if rng.random() > 0.05 else "A" for b in w) for w in windows]
    flipped = [reverse_complement(w) for w in windows]
    assert np.array_equal(match.shared_counts(windows), match.shared_counts(flipped))
    assert np.array_equal(match.predict(windows), match.predict(flipped))


def test_unique_counts_only_kmers_of_one_class():
    shared = "ACGTTGCAAGGCTTACCGATCGATGGCTAAC"
    a, b = shared + "TTTTGACCAGTAGGCATTAGACCAGTTAGGC", shared + "CCGGAATCGGATACCGTAGGTCCAAGTTC"
    every = ExactKmerMatch(k=11).fit([[a], [b]])
    one = ExactKmerMatch(k=11, unique=True).fit([[a], [b]])
    counts_every, counts_one = every.shared_counts([shared]), one.shared_counts([shared])
    assert counts_every[0, 0] == counts_every[0, 1] > 0
    assert counts_one.tolist() == [[0, 0]]


def test_ties_are_drawn_and_errors_name_the_cause():
    match = ExactKmerMatch(k=5, seed=3).fit([["ACGTACGTAA"], ["ACGTACGTAA"]])
    calls = match.predict(["ACGTACGTAA"] * 40)            # every window ties
    assert set(calls.tolist()) == {0, 1}
    with pytest.raises(ValueError, match="k must be in 1..31"):
        ExactKmerMatch(k=32)
    with pytest.raises(ValueError, match="call fit"):
        ExactKmerMatch(k=5).predict(["ACGTA"])
