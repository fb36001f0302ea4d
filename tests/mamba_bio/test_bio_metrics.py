"""Metrics and baselines: report fields, k-mer baseline, Markov perplexity."""
import math

import numpy as np
import pytest

from mambaseq.mamba_bio.datasets import SpeciesWindows
from mambaseq.mamba_bio.fasta import Records
from mambaseq.mamba_bio.metrics import (best_markov_perplexity, classification_report, kmer_baseline,
                               kmer_features, lm_metrics, markov_nll, paired_comparison,
                               plot_confusion)
from mambaseq.mamba_bio.simulate import write_species_fastas
from mambaseq.mamba_bio.tokenizers import reverse_complement


def test_lm_metrics():
    m = lm_metrics(100 * math.log(4), 100)
    assert m == {"perplexity": pytest.approx(4.0), "bits_per_base": pytest.approx(2.0),
                 "tokens": 100}
    with pytest.raises(ValueError):
        lm_metrics(1.0, 0)


def test_report_and_plot(tmp_path):
    rep = classification_report([0, 0, 1, 2], [0, 1, 1, 2], ["x", "y", "z"])
    assert rep["accuracy"] == 0.75 and rep["confusion_matrix"][0] == [1, 1, 0]
    assert rep["per_class_f1"]["z"] == 1.0 and rep["classes"] == ["x", "y", "z"]
    plot_confusion(rep["confusion_matrix"], rep["classes"], tmp_path / "cm.png")
    assert (tmp_path / "cm.png").stat().st_size > 1000


def test_paired_comparison_counts_discordant_windows():
    y = np.zeros(30, dtype=int)
    a = np.zeros(30, dtype=int)                   # always right
    b = np.r_[np.ones(12, dtype=int), np.zeros(18, dtype=int)]   # wrong on 12
    out = paired_comparison(y, a, b)
    assert out["a_only_correct"] == 12 and out["b_only_correct"] == 0
    assert out["mcnemar_p"] == pytest.approx(2 * 0.5 ** 12)
    assert paired_comparison(y, a, a) == {"a_only_correct": 0, "b_only_correct": 0,
                                          "mcnemar_p": 1.0}


def test_kmer_features_are_strand_symmetric():
    s = "ACGGTTACGATTTGCA"
    assert np.allclose(kmer_features([s], 3), kmer_features([reverse_complement(s)], 3))


def test_kmer_baseline_separates_compositions(tmp_path):
    rng = np.random.default_rng(0)
    genomes = {name: ["".join(rng.choice(list("ACGT"), size=20_000, p=p))]
               for name, p in {"at_rich": (0.3, 0.2, 0.2, 0.3),
                               "gc_rich": (0.2, 0.3, 0.3, 0.2)}.items()}
    files = write_species_fastas(tmp_path, genomes)
    ds = SpeciesWindows({k: [Records(p)] for k, p in files.items()})
    x_tr, y_tr = ds.fixed_windows("train", 300, 40)
    x_te, y_te = ds.fixed_windows("test", 300, 40)
    assert (kmer_baseline(x_tr, y_tr, x_te, k=2) == y_te).mean() > 0.9


def test_markov_known_answers():
    # A period-4 sequence is certain under order >= 1 (up to smoothing), uniform under order 0.
    train, test = "ACGT" * 500, "ACGT" * 50
    nll0, n0 = markov_nll(train, test, 0)
    assert n0 == 200 and nll0 / n0 == pytest.approx(math.log(4), rel=1e-3)
    best = best_markov_perplexity(train, test, max_order=3)
    assert best["order"] >= 1 and best["perplexity"] < 1.01
    assert markov_nll(train, "ACNGT", 1)[1] == 2            # contexts with N skipped
