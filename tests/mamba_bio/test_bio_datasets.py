"""Window datasets: disjoint splits, determinism in (step, rank), MLM masking, species sampling."""
import numpy as np
import pytest
import torch

from mambaseq.mamba_bio.datasets import (GenomeWindows, SpeciesWindows, fold_ranges, mlm_mask,
                               split_regions)
from mambaseq.mamba_bio.fasta import Records, Window
from mambaseq.mamba_bio.simulate import simulate_genomes, write_fasta, write_species_fastas
from mambaseq.mamba_bio.tokenizers import CharTokenizer


@pytest.fixture(scope="module")
def species_files(tmp_path_factory):
    genomes = simulate_genomes(length=3000, n_chromosomes=1, seed=3)
    return write_species_fastas(tmp_path_factory.mktemp("sim"), genomes)


def covered(regions):
    """Set of (record, position) covered by a list of (path, Window)."""
    return {(path, w.name, i) for path, w in regions for i in range(w.start, w.end)}


def test_split_by_position_is_disjoint_and_complete(species_files):
    src = Records(species_files["cow"])
    splits = split_regions(src, (0.8, 0.1, 0.1), by="auto")      # one record -> positions
    assert splits["train"] == [Window("chr1", 0, 2400)]
    assert splits["val"] == [Window("chr1", 2400, 2700)] and splits["test"][0].end == 3000


def test_split_by_record(tmp_path):
    path = write_fasta(tmp_path / "g.fa", {f"chr{i}": "ACGT" * 10 for i in range(10)})
    splits = split_regions(Records(path), (0.8, 0.1, 0.1))
    assert [len(splits[s]) for s in ("train", "val", "test")] == [8, 1, 1]
    assert splits["test"][0].name == "chr9"
    with pytest.raises(ValueError, match="summing to 1"):
        split_regions(Records(path), (0.8, 0.1, 0.2))


@pytest.mark.parametrize("start,end,k,val", [(0, 100, 5, 0.1), (7, 1010, 3, 0.05), (0, 16569, 5, 0.1)])
def test_folds_test_every_base_once_and_keep_splits_disjoint(start, end, k, val):
    tested = []
    for i in range(k):
        parts = fold_ranges(start, end, i, k, val)
        bases = {s: [b for lo, hi in parts[s] for b in range(lo, hi)] for s in parts}
        assert sorted(bases["train"] + bases["val"] + bases["test"]) == list(range(start, end))
        assert len(bases["val"]) == round(val * (end - start))
        tested += bases["test"]
    assert sorted(tested) == list(range(start, end))           # each base tested exactly once


def test_fold_split_errors(species_files):
    with pytest.raises(ValueError, match="k >= 2"):
        fold_ranges(0, 100, 0, 1)
    with pytest.raises(ValueError, match="by='fold'"):
        split_regions(Records(species_files["cow"]), by="position", fold=(0, 5))


def test_species_windows_never_cross_splits(species_files):
    ds = SpeciesWindows({k: [Records(v)] for k, v in species_files.items()}, seed=1)
    for label in range(len(ds.classes)):
        train, test = covered(ds.regions("train")[label]), covered(ds.regions("test")[label])
        val = covered(ds.regions("val")[label])
        assert train and test and not (train & test) and not (train & val) and not (val & test)
    seqs, labels = ds.fixed_windows("test", seq_len=200, per_class=5)
    train_text = {k: Records(v).fetch("chr1", 0, 2400) for k, v in species_files.items()}
    for s, y in zip(seqs, labels):
        assert len(s) == 200 and s not in train_text[ds.classes[y]]
    again, _ = ds.fixed_windows("test", seq_len=200, per_class=5)
    assert again == seqs
    with pytest.raises(ValueError, match="no region holds a window of 1000 bases"):
        ds.fixed_windows("test", seq_len=1000, per_class=1)


@pytest.mark.parametrize("rc_augment", [True, False])
def test_species_training_strand(species_files, rc_augment):
    sources = {k: [Records(v)] for k, v in species_files.items()}
    ds = SpeciesWindows(sources, rc_augment=rc_augment, seed=2)
    genomes = [Records(species_files[c]).fetch("chr1", 0, 3000) for c in ds.classes]
    batch = ds.get_batch(0, seq_len=60, batch_size=16)
    on_plus = [ds.tokenizer.decode(row) in genomes[y]
               for row, y in zip(batch["input_ids"], batch["labels"].tolist())]
    assert all(on_plus) if not rc_augment else not all(on_plus)


def test_species_substitutions_change_the_asked_share_of_training_bases(species_files):
    sources = {k: [Records(v)] for k, v in species_files.items()}
    clean = SpeciesWindows(sources, rc_augment=False, seed=4)
    noisy = SpeciesWindows(sources, rc_augment=False, seed=4, substitution_rate=0.4)
    a, b = clean.get_batch(3, 500, 16), noisy.get_batch(3, 500, 16)
    assert torch.equal(a["labels"], b["labels"])          # same windows, only bases changed
    changed = (a["input_ids"] != b["input_ids"]).float().mean().item()
    assert changed == pytest.approx(0.4 * 3 / 4, abs=0.02)   # a draw of the same base is no change
    acgt = [noisy.tokenizer.vocab.index(c) for c in "ACGT"]
    assert torch.isin(b["input_ids"], torch.tensor(acgt)).all()
    # evaluation windows are never perturbed
    assert noisy.fixed_windows("test", 100, 3)[0] == clean.fixed_windows("test", 100, 3)[0]
    with pytest.raises(ValueError, match="substitution_rate must be in"):
        SpeciesWindows(sources, substitution_rate=1.0)


def test_species_folds_rotate_the_test_block(species_files):
    sources = {k: [Records(v)] for k, v in species_files.items()}
    tested = set()
    for i in range(3):
        ds = SpeciesWindows(sources, fractions=(0.8, 0.1, 0.1), by="fold", fold=(i, 3))
        for label in range(len(ds.classes)):
            train, test = covered(ds.regions("train")[label]), covered(ds.regions("test")[label])
            assert test and train and not (train & test) and not (test & tested)
            tested |= test
    assert len(tested) == len(species_files) * 3000


def test_batches_are_a_function_of_step_and_rank(species_files):
    ds = SpeciesWindows({k: [Records(v)] for k, v in species_files.items()}, seed=0)
    a = ds.get_batch(7, 64, 8, rank=0, world_size=2)
    b = ds.get_batch(7, 64, 8, rank=0, world_size=2)
    c = ds.get_batch(7, 64, 8, rank=1, world_size=2)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert not torch.equal(a["input_ids"], c["input_ids"])
    assert a["input_ids"].shape == (8, 64) and a["labels"].shape == (8,)


def test_genome_windows_skip_n_and_rc_augment(tmp_path):
    seq = "N" * 500 + "ACGGT" * 100 + "N" * 500                   # only 500 usable bases
    src = Records(write_fasta(tmp_path / "n.fa", {"chr1": seq}))
    ds = GenomeWindows(src, [Window("chr1", 0, len(seq))], max_n_frac=0.0, seed=0)
    ids = ds.get_batch(0, 100, 16)["input_ids"]
    tok = CharTokenizer()
    text = [tok.decode(r) for r in ids]
    assert all("N" not in t for t in text)
    forward = [t for t in text if t in seq]
    assert 0 < len(forward) < 16                                   # both strands seen
    with pytest.raises(ValueError, match="no window of 600 bases with at most 0% N"):
        ds.get_batch(0, 600, 1)


def test_mlm_mask_rates_and_labels():
    tok = CharTokenizer()
    ids = torch.full((64, 512), tok.base_ids[0])
    inputs, labels = mlm_mask(ids, np.random.default_rng(0), tok)
    chosen = labels != -100
    assert abs(chosen.float().mean().item() - 0.15) < 0.01
    assert (labels[chosen] == ids[chosen]).all()
    masked = (inputs == tok.mask_id).float().sum() / chosen.sum()
    assert abs(masked.item() - 0.8) < 0.03
    assert (inputs[~chosen] == ids[~chosen]).all()


def test_unknown_base_in_a_genome_names_file_record_and_position(tmp_path):
    path = write_fasta(tmp_path / "x.fa", {"chr1": "ACGT" * 10 + "X" + "ACGT" * 10})
    ds = GenomeWindows(Records(path), [Window("chr1", 40, 81)], rc_augment=False)
    with pytest.raises(ValueError, match=r"unknown base 'X' at position 0 in .*x\.fa:chr1:40"):
        ds.get_batch(0, 41, 1)
