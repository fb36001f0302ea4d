"""Simulator: rate matrices, substitution amount, the tree's closest pair, indels."""
import itertools

import numpy as np
import pytest

from mambaseq.mamba_bio.fasta import Genome
from mambaseq.mamba_bio.simulate import (gtr_rate_matrix, hky_rate_matrix, simulate_genomes,
                                         transition_matrix)
from mambaseq.pipelines.cli import main

PI = (0.3, 0.2, 0.2, 0.3)


@pytest.mark.parametrize("q", [hky_rate_matrix(PI, 3.0),
                               gtr_rate_matrix(PI, (1.0, 2.0, 0.5, 1.5, 3.0, 1.0))])
def test_rate_matrix_properties(q):
    pi = np.array(PI)
    assert np.allclose(q.sum(1), 0)
    assert np.isclose(-(pi * np.diag(q)).sum(), 1.0)               # one substitution / unit
    assert np.allclose(pi[:, None] * q, (pi[:, None] * q).T)        # time-reversible
    p = transition_matrix(q, 0.3)
    assert np.allclose(p.sum(1), 1) and np.allclose(pi @ p, pi)     # pi is stationary


def p_distance(a, b):
    a, b = (np.frombuffer(s.encode(), np.uint8) for s in (a, b))
    return float(np.mean(a != b))


def test_closest_pair_and_expected_divergence():
    tree = "((a:0.02,b:0.03):0.1,(c:0.05,d:0.2):0.1);"
    g = simulate_genomes(tree, length=20_000, pi=PI, seed=5)
    d = {pair: p_distance(g[pair[0]][0], g[pair[1]][0])
         for pair in itertools.combinations(sorted(g), 2)}
    assert min(d, key=d.get) == ("a", "b")
    # Expected p-distance of two leaves t apart: 1 - sum_i pi_i P_ii(t).
    expected = 1 - (np.array(PI) * np.diag(transition_matrix(hky_rate_matrix(PI), 0.05))).sum()
    assert abs(d[("a", "b")] - expected) < 0.006
    assert g == simulate_genomes(tree, length=20_000, pi=PI, seed=5)   # seeded


def test_indels_change_lengths_and_errors():
    g = simulate_genomes("(a:0.5,b:0.5);", length=2000, indel_rate=0.05, seed=0)
    assert len(g["a"][0]) != 2000 or len(g["b"][0]) != 2000
    with pytest.raises(ValueError, match="model must be"):
        simulate_genomes(model="jc")
    with pytest.raises(ValueError, match="unique name"):
        simulate_genomes("(a:0.1,a:0.1);")


def test_command_line_writes_indexable_fastas(tmp_path, capsys):
    assert main(["simulate-genomes", "--out", str(tmp_path), "--tree", "(x:0.1,y:0.1);",
                 "--length", "500", "--chromosomes", "2"]) == 0
    g = Genome(tmp_path / "x.fa", cache_dir=tmp_path / "cache")
    assert g.lengths == {"chr1": 500, "chr2": 500}
    assert "y\t" in capsys.readouterr().out


def test_composition_drift_is_lineage_specific():
    gc = {name: np.mean([c in "GC" for c in chroms[1]])
          for name, chroms in simulate_genomes("(a:1.0,b:1.0);", length=5000, n_chromosomes=2,
                                               composition_sd=1.5, seed=0).items()}
    homogeneous = simulate_genomes("(a:1.0,b:1.0);", length=5000, n_chromosomes=2, seed=0)
    flat = {name: np.mean([c in "GC" for c in chroms[1]]) for name, chroms in homogeneous.items()}
    assert abs(gc["a"] - gc["b"]) > 3 * abs(flat["a"] - flat["b"])


def test_repeat_families_follow_the_tree():
    from collections import Counter
    tree = "((a:0.01,b:0.01):0.01,c:0.02);"
    genomes = simulate_genomes(tree, length=6000, repeat_fraction=0.3, repeat_length=200,
                               repeat_divergence=0.0, seed=1)
    for chroms in genomes.values():                       # copies are ~30% of the result
        assert 6000 / 0.7 * 0.9 < len(chroms[0]) < 6000 / 0.7 * 1.1

    def repeated(seq, k=40):
        counts = Counter(seq[i:i + k] for i in range(len(seq) - k + 1))
        return {kmer for kmer, n in counts.items() if n >= 3}
    a, b, c = (repeated(genomes[x][0]) for x in "abc")
    assert a & b - c            # the (a, b) clade's family: in both sisters, not in c
    assert a - b - c            # a's own family
    plain = simulate_genomes(tree, length=6000, seed=1)
    assert all(len(ch[0]) == 6000 for ch in plain.values())
