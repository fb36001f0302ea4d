"""Genomics jobs end to end on simulated data (tiny models, a few steps), RC invariance,
chunked inference; a slow real-data run on the mitochondrial genomes."""
import json

import numpy as np
import pytest
import torch

from mambaseq import core
from mambaseq.mamba_bio.embeddings import embed_fasta, hidden_chunks
from mambaseq.mamba_bio.metrics import lm_nll
from mambaseq.mamba_bio.tokenizers import CharTokenizer
from mambaseq.pipelines.training.checkpoints import load_model
from mambaseq.pipelines import DemoConfig, EmbedConfig, demo, embed
from mambaseq.pipelines.cli import main
from species_data import TINY, simulated_species



@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return simulated_species(tmp_path_factory.mktemp("sim"))[1]


def last_json(text):
    return json.loads(text[text.index("{"):])


def test_rc_invariant_classifier_gives_same_logits_on_both_strands():
    tok = CharTokenizer()
    torch.manual_seed(0)
    config = dict(vocab_size=tok.vocab_size, d_model=16, n_layer=2, num_classes=3,
                  bidirectional=True)
    clf = core.SequenceClassifier(core.SequenceClassifierConfig(
        **config, rc_equivariant=True, complement=tok.complement_map.tolist()))
    ids = tok.batch_encode(["ACGGTCAGTTAC", "GGGATC"])
    logits = clf(ids["input_ids"], ids["attention_mask"])
    rc = tok.reverse_complement_ids(ids["input_ids"], ids["attention_mask"])
    assert torch.allclose(logits, clf(rc, ids["attention_mask"]), atol=1e-5)
    plain = core.SequenceClassifier(core.SequenceClassifierConfig(**config))
    assert not torch.allclose(plain(ids["input_ids"], ids["attention_mask"]),
                              plain(rc, ids["attention_mask"]), atol=1e-5)


def test_rc_equivariant_masked_lm_logits_follow_the_reverse_complement():
    from mambaseq.mamba_bio.heads import MaskedLM, MaskedLMConfig
    tok = CharTokenizer()
    torch.manual_seed(0)
    sizes = dict(vocab_size=tok.vocab_size, d_model=16, n_layer=2)
    mlm = MaskedLM(MaskedLMConfig(**sizes, rc_equivariant=True,
                                  complement=tok.complement_map.tolist()))
    ids = tok.encode("ACGGTCAGTTACNNAG")[None]
    ids[0, 3] = tok.mask_id
    logits = mlm(ids)                                                      # (1, L, V)
    rc_logits = mlm(tok.reverse_complement_ids(ids))
    # position t of the RC is position L-1-t of the original, each base scored as its complement
    expected = logits.flip(1)[..., tok.complement_map]
    torch.testing.assert_close(rc_logits, expected, atol=1e-5, rtol=1e-5)
    plain = MaskedLM(MaskedLMConfig(**sizes))
    assert not torch.allclose(plain(tok.reverse_complement_ids(ids)),
                              plain(ids).flip(1)[..., tok.complement_map], atol=1e-3)
    with pytest.raises(ValueError, match="complement map"):
        MaskedLMConfig(**sizes, rc_equivariant=True)


def test_chunked_inference_equals_whole():
    tok = CharTokenizer()
    torch.manual_seed(0)
    lm = core.MambaLM(core.MambaLMConfig(vocab_size=tok.vocab_size, d_model=16, n_layer=2)).eval()
    ids = tok.encode("ACGTNACGGTTA" * 20, add_bos=True)
    whole_nll, n = lm_nll(lm, ids, chunk_len=10_000)
    assert n == 12 * 20 - 20                                   # the N are not scored
    assert lm_nll(lm, ids, chunk_len=17)[0] == pytest.approx(whole_nll, rel=1e-5)
    chunks = torch.cat([h for _, h in hidden_chunks(lm, ids, chunk_len=23)])
    assert torch.allclose(chunks, lm.embed(ids[None])[0], atol=1e-5)


def test_pretrain_eval_embed_and_classify_on_simulated_genomes(sim, tmp_path, capsys):
    out = tmp_path / "lm"
    assert main(["pretrain-genome", "--fasta", str(sim["a"]), "--out", str(out),
                 "--steps", "2", "--seq-len", "32", "--val-bases", "300", *TINY]) == 0
    report = last_json(capsys.readouterr().out)
    val = report["val"]                  # the whole val split scored: 300 bases, all A/C/G/T
    assert val["tokens"] == 300 and val["perplexity"] == pytest.approx(np.exp(val["val_loss"]))
    assert report["markov_baseline"]["perplexity"] > 1
    assert (out / "model" / "tokenizer.json").is_file()

    assert main(["eval-genome", "--model", str(out / "model"), "--fasta", str(sim["b"]),
                 "--chunk-len", "500"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) == {"perplexity", "bits_per_base", "tokens"}
    assert result["tokens"] == 3000
    assert result["bits_per_base"] == pytest.approx(np.log2(result["perplexity"]))

    emb = tmp_path / "e.npz"
    embedded = embed(EmbedConfig(model=str(out / "model"), fasta=str(sim["c"]), out=str(emb),
                                 per_position=str(tmp_path / "pos"), chunk_len=400))
    assert embedded.out == emb and embedded.shape == (2, 8)
    assert embedded.names == ["chr1", "chr2"] and embedded.per_position == tmp_path / "pos"
    data = np.load(emb)
    assert list(data["names"]) == ["chr1", "chr2"] and data["embeddings"].shape == (2, 8)
    positions = np.load(tmp_path / "pos" / "0_chr1.npy")
    assert positions.shape == (1500, 8)
    assert np.allclose(positions.mean(0), data["embeddings"][0], atol=1e-5)
    # in memory, no file: the same vectors (whole records: chunking does not change them)
    model = load_model(out / "model")
    vectors, names = embed_fasta(model, CharTokenizer(), sim["c"])
    assert names == ["chr1", "chr2"] and vectors.dtype == np.float32
    assert np.allclose(vectors, data["embeddings"], atol=1e-5)
    # the command line: max pooling into a .npy, names beside it
    assert main(["embed", "--model", str(out / "model"), "--fasta", str(sim["c"]),
                 "--out", str(tmp_path / "e.npy"), "--pooling", "max"]) == 0
    assert "2 embeddings of width 8 -> " in capsys.readouterr().out
    assert np.allclose(np.load(tmp_path / "e.npy")[0], positions.max(0), atol=1e-6)
    assert (tmp_path / "e.names.txt").read_text() == "chr1\nchr2\n"
    with pytest.raises(ValueError, match="out must end in .npz or .npy, got e.txt"):
        EmbedConfig(model="m", fasta="f.fa", out="e.txt")

    cls = tmp_path / "cls"
    species = [f"{k}={v}" for k, v in sim.items()]
    assert main(["classify-species", "--species", *species, "--out", str(cls),
                 "--steps", "2", "--seq-len", "64", "--eval-per-class", "3",
                 "--baseline-per-class", "10", "--kmer", "2", *TINY]) == 0
    rep = json.loads((cls / "report.json").read_text())
    cm = np.array(rep["confusion_matrix"])
    assert rep["classes"] == ["a", "b", "c"] and cm.sum() == 9 and (cm.sum(1) == 3).all()
    assert rep["accuracy"] == pytest.approx(np.trace(cm) / 9)
    assert set(rep["per_class_f1"]) == {"a", "b", "c"}
    base = np.array(rep["baseline"]["confusion_matrix"])
    assert rep["baseline_accuracy"] == pytest.approx(np.trace(base) / 9) and base.sum() == 9
    assert (cls / "confusion.png").is_file()


def test_pretrain_on_several_fasta_files(sim, tmp_path, capsys):
    out = tmp_path / "multi"
    assert main(["pretrain-genome", "--fasta", str(sim["a"]), str(sim["b"]), "--out", str(out),
                 "--steps", "2", "--seq-len", "32", "--val-bases", "300", *TINY]) == 0
    report = json.loads((out / "report.json").read_text())
    files = {entry.split(":")[0] for entry in report["splits"]["train"] + report["splits"]["val"]}
    assert files == {sim["a"].name, sim["b"].name}
    assert report["val"]["tokens"] == 300 and report["markov_baseline"]["perplexity"] > 1
    # the two files share chromosome names: a BED over them is ambiguous
    bed = tmp_path / "r.bed"
    bed.write_text("chr1\t0\t500\n")
    assert main(["pretrain-genome", "--fasta", str(sim["a"]), str(sim["b"]), "--bed", str(bed),
                 "--out", str(tmp_path / "x"), "--steps", "1", *TINY]) == 1
    assert "in more than one FASTA file" in capsys.readouterr().err


def test_mlm_pretraining_initialises_a_classifier(sim, tmp_path, capsys):
    out = tmp_path / "mlm"
    assert main(["pretrain-genome", "--fasta", str(sim["a"]), "--objective", "mlm",
                 "--out", str(out), "--steps", "2", "--seq-len", "32", *TINY]) == 0
    assert main(["classify-species", "--species", f"a={sim['a']}", f"b={sim['b']}",
                 "--out", str(tmp_path / "cls"), "--init-from", str(out / "model"),
                 "--steps", "1", "--seq-len", "32", "--eval-per-class", "2",
                 "--baseline-per-class", "4", "--kmer", "1", *TINY]) == 0
    # A causal classifier cannot take the bidirectional backbone: a clear error.
    assert main(["classify-species", "--species", f"a={sim['a']}", f"b={sim['b']}",
                 "--out", str(tmp_path / "bad"), "--init-from", str(out / "model"),
                 "--causal", "--steps", "1", "--seq-len", "32", *TINY]) == 1
    assert "does not fit this classifier" in capsys.readouterr().err

    # An RC-equivariant MLM initialises an RC-invariant classifier (and only that one).
    rc = tmp_path / "mlm_rc"
    assert main(["pretrain-genome", "--fasta", str(sim["a"]), "--objective", "mlm",
                 "--rc-equivariant", "--out", str(rc), "--steps", "2", "--seq-len", "32",
                 *TINY]) == 0
    assert core.load_pretrained(rc / "model").config.rc_equivariant
    assert main(["classify-species", "--species", f"a={sim['a']}", f"b={sim['b']}",
                 "--out", str(tmp_path / "cls_rc"), "--init-from", str(rc / "model"),
                 "--rc-invariant", "--steps", "1", "--seq-len", "32", "--eval-per-class", "2",
                 "--baseline-per-class", "4", "--kmer", "1", *TINY]) == 0
    assert main(["classify-species", "--species", f"a={sim['a']}", f"b={sim['b']}",
                 "--out", str(tmp_path / "bad_rc"), "--init-from", str(rc / "model"),
                 "--steps", "1", "--seq-len", "32", *TINY]) == 1
    assert "rc_invariant for an rc_equivariant mlm" in capsys.readouterr().err
    assert main(["pretrain-genome", "--fasta", str(sim["a"]), "--rc-equivariant",
                 "--out", str(tmp_path / "x"), "--steps", "1", *TINY]) == 2   # config refuses
    assert "error: rc_equivariant needs objective mlm" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_classify_species_cross_validation(sim, tmp_path, capsys):
    cls = tmp_path / "cv"
    species = [f"{k}={v}" for k, v in sim.items()]
    assert main(["classify-species", "--species", *species, "--out", str(cls), "--folds", "2",
                 "--steps", "1", "--seq-len", "64", "--eval-per-class", "3",
                 "--baseline-per-class", "10", "--kmer", "2", "--substitution-rate", "0.1",
                 *TINY]) == 0
    assert json.loads((cls / "config.json").read_text())["substitution_rate"] == 0.1
    rep = json.loads((cls / "report.json").read_text())
    assert [f["fold"] for f in rep["folds"]] == [0, 1]
    assert np.sum(rep["confusion_matrix"]) == 2 * 3 * 3 == rep["test_windows"]
    # pooled accuracy over equal-sized folds = mean of the fold accuracies
    assert rep["accuracy"] == pytest.approx(np.mean([f["accuracy"] for f in rep["folds"]]))
    tests = [f["test_regions"]["a"][0] for f in rep["folds"]]
    assert tests[0] != tests[1] and (cls / "fold1" / "model").is_dir()
    assert "accuracy_sd" in last_json(capsys.readouterr().out)
    won = sum(f["accuracy"] > f["baseline_accuracy"] for f in rep["folds"])
    assert rep["folds_won"] == won
    paired = rep["paired_vs_baseline"]          # discordant windows agree with the accuracies
    assert (paired["a_only_correct"] - paired["b_only_correct"]
            == round((rep["accuracy"] - rep["baseline_accuracy"]) * rep["test_windows"]))
    assert 0 < paired["mcnemar_p"] <= 1


@pytest.mark.parametrize("argv,code,message", [
    (["--species", "a"], 2, "argument --species: expects NAME=FASTA"),   # refused by the config
    (["--species", "a=x.fa", "b=y.fa", "--folds", "1"], 2, "argument --folds: must be 0"),
    (["--species", "a=/nonexistent.fa", "b=/nonexistent.fa"], 1, "not found: /nonexistent.fa"),
])
def test_classify_species_bad_input(tmp_path, capsys, argv, code, message):
    assert main(["classify-species", *argv, "--out", str(tmp_path / "x")]) == code
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_mito_species_end_to_end(shared_data, tmp_path, capsys):
    """Nine mitogenomes, 1 kb windows, region-disjoint splits, tiny model, a few steps."""
    mito = sorted((shared_data / "dna" / "mito").glob("*.fa"))
    species = [f"{p.stem}={p}" for p in mito]
    assert main(["classify-species", "--species", *species, "--out", str(tmp_path / "m"),
                 "--steps", "10", "--seq-len", "1000", "--eval-per-class", "5",
                 "--baseline-per-class", "50", *TINY]) == 0
    rep = json.loads((tmp_path / "m" / "report.json").read_text())
    cm = np.array(rep["confusion_matrix"])
    assert len(rep["classes"]) == 9 and cm.sum() == 45
    assert rep["accuracy"] == pytest.approx(np.trace(cm) / 45)
    assert rep["baseline_accuracy"] > rep["chance"]        # 3-mer frequencies tell mitogenomes apart


def test_demo_runs_the_jobs_as_functions_and_reports_a_failure(tmp_path, capsys):
    """Every demo job at 1 step (about 15 CPU seconds), then through the command line again:
    the training runs continue, a job that fails is reported and the one that needs it is
    skipped (exit code 1)."""
    out = tmp_path / "demo"
    result = demo(DemoConfig(out=str(out), steps=1, device="cpu"))
    assert result.ok and list(result.jobs) == ["pretrain-genome", "classify-species",
                                               "train-audio", "generate-audio"]
    summary = json.loads((out / "demo.json").read_text())
    assert result.summary_file == out / "demo.json" and set(summary) == set(result.jobs)
    species = summary["classify-species"]
    assert species["status"] == "ok" and species["out"] == str(out / "classify-species")
    assert {k: species["config"][k] for k in ("steps", "d_model", "n_layer", "ngram", "causal")} \
        == {"steps": 4, "d_model": 64, "n_layer": 1, "ngram": 6, "causal": True}
    assert len(species["config"]["species"]) == 6
    report = result.jobs["classify-species"].result.report
    assert species["figures"] == {k: report[k] for k in ("accuracy", "baseline_accuracy",
                                                         "chance")}
    assert summary["pretrain-genome"]["figures"]["val"] == \
        result.jobs["pretrain-genome"].result.report["val"]
    assert [p.name for p in result.jobs["generate-audio"].result.files] == \
        ["sample_000.wav", "sample_001.wav"]
    assert summary["generate-audio"]["config"]["model"] == str(out / "train-audio" / "model")

    audio = out / "data" / "audio"                    # no audio now: train-audio fails
    for wav in audio.iterdir():
        wav.unlink()
    capsys.readouterr()
    assert main(["demo", "--out", str(out), "--steps", "1", "--device", "cpu",
                 "--jobs", "pretrain-genome,train-audio,generate-audio"]) == 1
    summary = json.loads((out / "demo.json").read_text())
    assert summary["pretrain-genome"]["status"] == "ok"
    assert summary["pretrain-genome"]["config"]["resume"] is True
    assert summary["train-audio"]["status"].startswith("failed: ")
    assert summary["generate-audio"] == {"status": "skipped: train-audio did not succeed"}
    printed = capsys.readouterr()            # progress on stderr, the summary line on stdout
    assert "[demo] train-audio: failed: " in printed.err and "summary in " in printed.out


@pytest.mark.slow
def test_demo_species_classifier_beats_its_kmer_baseline(tmp_path):
    """The demo's pretrain-genome and classify-species jobs (about 5 CPU minutes): the
    classifier is above the k-mer baseline on the demo's simulated genomes, in demo.json."""
    result = demo(DemoConfig(out=str(tmp_path / "demo"),
                             jobs="pretrain-genome,classify-species"))
    assert result.ok
    figures = json.loads((tmp_path / "demo" / "demo.json").read_text())["classify-species"]["figures"]
    assert figures["accuracy"] > figures["baseline_accuracy"] > figures["chance"]
