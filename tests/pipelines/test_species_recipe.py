"""Species classification recipe: the split written as BED, pretraining that never reads a
test region, seeds pooled in one report, accuracy against window length."""
import json

import numpy as np
import pytest
import torch

from mambaseq import core
from mambaseq.mamba_bio.bed import SplitRegion, read_split_bed, write_split_bed
from mambaseq.mamba_bio.datasets import GenomeWindows, SpeciesWindows
from mambaseq.mamba_bio.fasta import Window, open_sequences
from mambaseq.mamba_bio.metrics import accuracy_by_length
from mambaseq.mamba_bio.predict import window_probabilities
from mambaseq.mamba_bio.pretraining import pretraining_regions
from mambaseq.mamba_bio.species import PartScores, parse_species, seed_ensemble
from mambaseq.mamba_bio.tokenizers import CharTokenizer
from mambaseq.pipelines import (ClassifySpeciesConfig, ConfigError, PretrainGenomeConfig,
                                pretrain_genome, train_species_classifier)
from mambaseq.pipelines.cli import main
from species_data import TINY, simulated_species

# species_data.TINY as config fields
TINY_FIELDS = dict(d_model=8, n_layer=1, d_state=4, batch_size=2, warmup_steps=1, log_every=1)


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return simulated_species(tmp_path_factory.mktemp("sim"), length=3000, seed=5)[1]


def test_split_bed_round_trip_and_errors(tmp_path):
    rows = [SplitRegion("train", "a", str(tmp_path / "a.fa"), Window("chr1", 0, 800)),
            SplitRegion("test", "a", str(tmp_path / "a.fa"), Window("chr1", 900, 1000))]
    path = write_split_bed(tmp_path / "split.bed", rows)
    assert read_split_bed(path) == rows
    path.write_text("chr1\t0\t10\tholdout\t0\t+\ta\t/x.fa\n")
    with pytest.raises(ValueError, match=r"split.bed:1: column 4 must be train, val or test"):
        read_split_bed(path)
    path.write_text("chr1\t0\t10\ttrain\n")
    with pytest.raises(ValueError, match=r"split.bed:1: a split BED line has 8"):
        read_split_bed(path)


def _overlaps(window, regions):
    return any(r.name == window.name and window.start < r.end and r.start < window.end
               for r in regions)


def test_pretraining_from_a_split_bed_never_reads_a_test_base(sim, tmp_path):
    species = {k: [open_sequences(v)] for k, v in sim.items()}
    data = SpeciesWindows(species, fractions=(0.6, 0.2, 0.2), by="position")
    bed = write_split_bed(tmp_path / "split.bed", data.split_table())
    files, sources, splits = pretraining_regions(split_bed=str(bed))
    assert sorted(files) == sorted(str(p.resolve()) for p in sim.values())
    test = {f: [r.window for r in read_split_bed(bed) if r.split == "test" and r.fasta == f]
            for f in files}
    assert all(test.values())
    windows = GenomeWindows(sources, splits["train"], seed=3)
    rng = np.random.default_rng(0)
    drawn = 0
    for _ in range(400):
        sampler, window, _ = windows.sampler.sample(rng, 50)
        f = files[[s is sampler for s in windows.sampler.samplers].index(True)]
        assert not _overlaps(window, test[f]), (f, window)
        drawn += 1
    assert drawn == 400
    for f, val in zip(files, splits["val"]):      # validation stays off the test regions too
        assert val and not any(_overlaps(w, test[f]) for w in val)


def test_pretrain_genome_split_bed_refuses_fasta_beside_it(sim, tmp_path):
    bed = write_split_bed(tmp_path / "split.bed", [
        SplitRegion("train", "a", str(sim["a"]), Window("a_chr1", 0, 100))])
    with pytest.raises(ValueError, match="split_bed names the FASTA files and regions itself; "
                                         "drop fasta"):
        pretrain_genome(PretrainGenomeConfig(split_bed=str(bed), fasta=[str(sim["a"])],
                                             out=str(tmp_path / "x"), steps=1, **TINY_FIELDS))


def test_classify_species_pretrains_on_train_regions_then_fine_tunes(sim, tmp_path):
    out = tmp_path / "cls"
    species = [f"{k}={v}" for k, v in sim.items()]
    result = train_species_classifier(ClassifySpeciesConfig(
        species=species, out=str(out), pretrain_steps=2, steps=2, seq_len=64,
        eval_per_class=2, baseline_per_class=4, kmer=1, seeds=[0, 1], eval_lengths=[64, 256],
        **TINY_FIELDS))
    rep = json.loads((out / "report.json").read_text())
    assert json.loads(json.dumps(result.report)) == rep and result.out == out
    assert [p.seed for p in result.parts] == [0, 1] and result.model_dir == out / "seed0" / "model"
    assert [p.model_dir for p in result.parts] == [out / "seed0" / "model", out / "seed1" / "model"]
    assert all(len(p.labels) == len(p.pred) == len(p.windows) == 3 * 2 for p in result.parts)
    assert [s["seed"] for s in rep["seeds"]] == [0, 1]
    ens = rep["seed_ensemble"]
    assert ens["members"] == [0, 1] and ens["test_windows"] == rep["test_windows"]
    assert ens["baseline_accuracy"] == rep["baseline_accuracy"] and 0 <= ens["accuracy"] <= 1
    for seed in (0, 1):
        split = read_split_bed(out / f"seed{seed}" / "split.bed")
        pre = json.loads((out / f"seed{seed}" / "pretrain" / "report.json").read_text())
        test = [r.window for r in split if r.split == "test"]
        for item in pre["splits"]["train"] + pre["splits"]["val"]:
            _, name, span = item.rsplit(":", 2)
            start, end = map(int, span.split("-"))
            assert not _overlaps(Window(name, start, end), test)
        assert (out / f"seed{seed}" / "pretrain" / "model").is_dir()
    rows = json.loads((out / "accuracy_vs_length.json").read_text())["rows"]
    assert [r["length"] for r in rows] == [64, 256]
    assert all(r["test_windows"] == 2 * 3 * 2 and len(r["per_part"]) == 2 for r in rows)
    assert (out / "accuracy_vs_length.png").stat().st_size > 0
    summary = result.summary()
    assert summary["accuracy_vs_length"] == {r["length"]: [round(r["accuracy"], 4),
                                                           round(r["baseline_accuracy"], 4),
                                                           round(r["exact_kmer_accuracy"], 4)]
                                             for r in rows}
    assert summary["seed_ensemble_accuracy"] == ens["accuracy"]
    assert summary["report"] == str(out / "report.json")


def test_seed_ensemble_scores_every_seed_window_with_the_mean_log_probabilities():
    tok = CharTokenizer()
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(core.SequenceClassifier(core.SequenceClassifierConfig(
            vocab_size=tok.vocab_size, d_model=8, n_layer=1, num_classes=3, d_state=4)).eval())
    rng = np.random.default_rng(0)
    windows = ["".join(rng.choice(list("ACGT"), 40)) for _ in range(12)]
    labels = rng.integers(0, 3, 12)
    parts = [PartScores(classes=["x", "y", "z"], labels=labels[6 * i:6 * i + 6],
                        pred=np.zeros(6, int), baseline_pred=np.zeros(6, int),
                        windows=windows[6 * i:6 * i + 6], model=m, scored_model="final model",
                        steps=1, test_regions={}, seed=10 + i) for i, m in enumerate(models)]
    ens = seed_ensemble(parts, tok, tokens_per_batch=1000)
    geo = sum(np.log(window_probabilities(m, tok, windows)) for m in models)
    assert ens["accuracy"] == pytest.approx(float((geo.argmax(1) == labels).mean()))
    assert ens["baseline_accuracy"] == pytest.approx(float((labels == 0).mean()))
    assert ens["members"] == [10, 11] and ens["test_windows"] == 12


def test_accuracy_by_length_pools_parts_and_gives_their_spread():
    part = lambda pred: {100: {"labels": np.array([0, 1, 1, 0]), "pred": np.array(pred),  # noqa: E731
                               "baseline_pred": np.array([0, 0, 0, 0])}}
    (row,) = accuracy_by_length([part([0, 1, 1, 0]), part([1, 1, 1, 1])])
    assert row["accuracy"] == pytest.approx(0.75)
    assert [p["accuracy"] for p in row["per_part"]] == [1.0, 0.5]
    assert row["accuracy_sd"] == pytest.approx(np.std([1.0, 0.5], ddof=1))
    assert row["baseline_accuracy"] == 0.5 and row["baseline_accuracy_sd"] == 0.0


def test_classify_species_option_errors(sim, tmp_path):
    species = [f"{k}={v}" for k, v in sim.items()]
    with pytest.raises(ValueError, match="^folds and seeds both repeat the training; choose one$"):
        ClassifySpeciesConfig(species=species, out=str(tmp_path / "a"), folds=2, seeds=[0, 1])
    with pytest.raises(ValueError, match="^pretrain_steps and init_from both give the starting "
                                         "model; choose one$"):
        ClassifySpeciesConfig(species=species, out=str(tmp_path / "b"), pretrain_steps=2,
                              init_from=str(tmp_path))
    for bad, message in [(dict(folds=1), "folds must be 0 (one split) or at least 2, got 1"),
                         (dict(seeds=[3, 3]), "seeds must differ, got [3, 3]"),
                         (dict(species=["a"]), "species expects NAME=FASTA[,FASTA...], got 'a'"),
                         (dict(species=["a=x.fa", "a=y.fa"]), "species names species 'a' twice"),
                         (dict(kmer=32), "kmer must be an integer in [1, 31], got 32")]:
        with pytest.raises(ConfigError) as err:
            ClassifySpeciesConfig(**{"species": species, "out": "o", **bad})
        assert str(err.value) == f"ClassifySpeciesConfig.{message}"
    with pytest.raises(ValueError, match="rc_invariant needs a bidirectional model"):
        ClassifySpeciesConfig(species=species, out="o", rc_invariant=True, ngram=3)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # a length no test region holds is refused before any training
    with pytest.raises(ValueError) as err:
        train_species_classifier(ClassifySpeciesConfig(
            species=species, out=str(tmp_path / "c"), eval_lengths=[200, 5000], seq_len=64,
            **TINY_FIELDS))
    assert str(err.value).startswith("eval_lengths 5000: species 'a' has no test region of "
                                     "5000 bases (its longest: 300)")
    assert not (tmp_path / "c" / "checkpoints").exists()


def test_classify_species_command_line(sim, tmp_path, capsys):
    """The command line: flags -> ClassifySpeciesConfig -> the job -> the summary as JSON;
    a config the job refuses is one line naming the flag or the fields."""
    out = tmp_path / "cli"
    species = [f"{k}={v}" for k, v in sim.items()]
    assert main(["classify-species", "--species", *species, "--out", str(out), "--steps", "1",
                 "--seq-len", "64", "--eval-per-class", "2", "--baseline-per-class", "4",
                 "--kmer", "1", "--fractions", "0.6", "0.2", "0.2", *TINY]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed[printed.index("{"):])
    report = json.loads((out / "report.json").read_text())
    assert summary["report"] == str(out / "report.json")
    assert summary["accuracy"] == report["accuracy"] and report["seq_len"] == 64
    config = json.loads((out / "config.json").read_text())
    assert config["command"] == "classify-species" and config["fractions"] == [0.6, 0.2, 0.2]
    assert config["d_model"] == 8 and config["steps"] == 1 and config["eval_every"] == 100
    assert main(["classify-species", "--species", *species, "--out", str(tmp_path / "x"),
                 "--folds", "1"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "mambaseq classify-species: error: argument --folds: must be 0 (one split) or at "
        "least 2, got 1")
    assert main(["classify-species", "--species", *species, "--out", str(tmp_path / "x"),
                 "--folds", "2", "--seeds", "0", "1"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "mambaseq classify-species: error: folds and seeds both repeat the training; choose one")
    assert not (tmp_path / "x").exists()


def test_parse_species_keeps_the_order_and_the_files():
    assert parse_species(["b=x.fa,y.fa", "a=z.fa,"]) == {"b": ["x.fa", "y.fa"], "a": ["z.fa"]}
    assert list(parse_species(["b=x.fa", "a=z.fa"])) == ["b", "a"]


def test_tiled_windows_cover_the_test_regions_without_overlap(sim):
    species = {k: [open_sequences(v)] for k, v in sim.items()}
    data = SpeciesWindows(species, fractions=(0.6, 0.2, 0.2), by="position")
    seqs, labels = data.tiled_windows("test", 100, per_class=1000)
    per_class = np.bincount(labels)
    # 2 chromosomes x 600 test bases per species -> 12 tiles of 100 bases each
    assert per_class.tolist() == [12, 12, 12] and all(len(s) == 100 for s in seqs)
    first = [s for s, y in zip(seqs, labels) if y == 0]
    assert len(set(first)) == len(first)
    few, few_labels = data.tiled_windows("test", 100, per_class=3)
    assert np.bincount(few_labels).tolist() == [3, 3, 3]
    with pytest.raises(ValueError, match="has no test window of 5000 bases"):
        data.tiled_windows("test", 5000, per_class=3)
