"""bench.species_homology: canonical k-mers and the count of a split's test tiles whose
homolog sits in another species' training regions."""
import json

import numpy as np
import pytest
import torch

from mambaseq import core
from mambaseq.bench import species_homology
from mambaseq.bench.species_homology import canonical_kmers, homology_table
from mambaseq.mamba_bio.bed import SplitRegion, write_split_bed
from mambaseq.mamba_bio.fasta import Window
from mambaseq.mamba_bio.predict import CLASSES_FILE, load_classifier, window_probabilities
from mambaseq.mamba_bio.tokenizers import CharTokenizer, reverse_complement


def _random_dna(rng, n):
    return "".join(rng.choice(list("ACGT"), n))


def test_canonical_kmers_are_strand_free_and_skip_n():
    seq = _random_dna(np.random.default_rng(0), 300)
    assert np.array_equal(np.sort(canonical_kmers(seq, 16)),
                          np.sort(canonical_kmers(reverse_complement(seq), 16)))
    assert len(canonical_kmers(seq, 16)) == 300 - 15
    # "ACGTNACGTAC", k=4: only ACGT, ACGT, CGTA, GTAC avoid the N; ACGT is its own RC
    codes = canonical_kmers("ACGTNACGTAC", 4)
    assert len(codes) == 4 and codes[0] == codes[1] == 0b00011011
    assert len(canonical_kmers("ACG", 4)) == 0
    with pytest.raises(ValueError, match="k must be in 1..31"):
        canonical_kmers(seq, 32)


def _save_classifier(folder, classes):
    tok = CharTokenizer()
    torch.manual_seed(0)
    core.SequenceClassifier(core.SequenceClassifierConfig(
        vocab_size=tok.vocab_size, d_model=8, n_layer=1, num_classes=len(classes),
        d_state=4)).save_pretrained(folder)
    tok.save(folder)
    (folder / CLASSES_FILE).write_text(json.dumps(classes))
    return folder


def test_a_test_region_copied_into_the_other_species_training_is_found(tmp_path):
    rng = np.random.default_rng(1)
    a_train, a_test, b_train = (_random_dna(rng, n) for n in (4000, 2000, 4000))
    # b's training regions hold a's test region, reverse-complemented, with 1 base in 50 changed
    copy = list(reverse_complement(a_test))
    for i in range(0, len(copy), 50):
        copy[i] = "A" if copy[i] != "A" else "C"
    b_train += "".join(copy)
    b_test = _random_dna(rng, 2000)
    fasta = {}
    for name, seq in (("a", a_train + a_test), ("b", b_train + b_test)):
        fasta[name] = tmp_path / f"{name}.fa"
        fasta[name].write_text(f">{name}1\n{seq}\n")
    regions = [SplitRegion("train", "a", str(fasta["a"]), Window("a1", 0, 4000)),
               SplitRegion("test", "a", str(fasta["a"]), Window("a1", 4000, 6000)),
               SplitRegion("train", "b", str(fasta["b"]), Window("b1", 0, 6000)),
               SplitRegion("test", "b", str(fasta["b"]), Window("b1", 6000, 8000))]
    bed = write_split_bed(tmp_path / "split.bed", regions)

    table = homology_table(bed, k=16, tile=1000, min_shared=50)
    a, b = table["rows"]["a"], table["rows"]["b"]
    assert a["tiles"] == b["tiles"] == 2
    assert a["homolog_in_other"] == 1.0 and a["homolog_in_own"] == 0.0
    assert a["median_shared"]["b"] > 300 and a["median_shared"]["a"] < 5
    assert b["homolog_in_other"] == 0.0 and b["homolog_in_own"] == 0.0

    species_homology.main(["--split-bed", str(bed), "--out", str(tmp_path / "out")])
    written = json.loads((tmp_path / "out" / "species_homology.json").read_text())
    assert written["rows"]["a"]["homolog_in_other"] == 1.0 and written["model"] is None
    assert "| a | 2 |" in (tmp_path / "out" / "species_homology.md").read_text()

    # --model: the classifier's accuracy on tiles with a homolog elsewhere and on the rest
    folder = _save_classifier(tmp_path / "cls", ["b", "a"])
    table = homology_table(bed, k=16, tile=1000, min_shared=50, model_dir=folder)
    model, tok, classes = load_classifier(folder)
    for name, seq in (("a", a_test), ("b", b_test)):
        right = window_probabilities(model, tok, [seq[:1000], seq[1000:]]).argmax(1) \
            == classes.index(name)
        row = table["rows"][name]
        with_homolog = row["accuracy_homolog_in_other"], row["accuracy_rest"]
        assert with_homolog == ((right.mean(), None) if name == "a" else (None, right.mean()))
    with pytest.raises(ValueError, match="are not the species of"):
        homology_table(bed, model_dir=_save_classifier(tmp_path / "c3", ["a", "b", "c"]))
