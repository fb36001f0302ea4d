"""predict-species: windows (stride, tail, short records, all-N), batching, a classifier
trained by classify-species applied end to end (plain, bgzip and gzip FASTA; every
classifier folder), one-line errors, and peak memory on a long record in a child process."""
import csv
import dataclasses
import functools
import gzip
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from Bio import bgzf

from mambaseq import core
from mambaseq.mamba_bio.fasta import open_sequences
from mambaseq.mamba_bio.predict import (CLASSES_FILE, load_classifier, load_classifiers,
                                        predict_records, predict_windows, window_probabilities,
                                        window_spans)
from mambaseq.mamba_bio.simulate import write_fasta
from mambaseq.mamba_bio.tokenizers import CharTokenizer
from mambaseq.pipelines import (ClassifySpeciesConfig, ConfigError, PredictSpeciesConfig,
                                predict_species, species, train_species_classifier)
from mambaseq.pipelines.cli import main
from species_data import simulated_species

CLASSES = ["a", "b", "c"]


def read_tsv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def save_random_classifier(folder, n_classes=3, d_model=8):
    """A randomly initialised classifier folder, as classify-species lays it out."""
    tok = CharTokenizer()
    torch.manual_seed(0)
    model = core.SequenceClassifier(core.SequenceClassifierConfig(
        vocab_size=tok.vocab_size, d_model=d_model, n_layer=1, num_classes=n_classes,
        bidirectional=True, d_state=4))
    model.save_pretrained(folder)
    tok.save(folder)
    (folder / CLASSES_FILE).write_text(json.dumps(CLASSES[:n_classes]))
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny classifier (with 3-mer embeddings) trained by classify-species on three
    simulated species, with checkpoints (step_*, best) beside its model/ folder, and the
    species' FASTA files."""
    root = tmp_path_factory.mktemp("predict")
    genomes, fastas = simulated_species(root / "sim")
    out = root / "cls"
    train_species_classifier(ClassifySpeciesConfig(
        species=[f"{k}={v}" for k, v in fastas.items()], out=str(out), steps=2, seq_len=64,
        eval_per_class=2, baseline_per_class=4, kmer=1, eval_every=1, save_every=1, ngram=3,
        d_model=8, n_layer=1, d_state=4, batch_size=2, warmup_steps=1, log_every=1))
    assert json.loads((out / "model" / "config.json").read_text())["config"]["ngram"] == 3
    return {"run": out, "fastas": fastas, "genomes": genomes}


@pytest.mark.parametrize("length, window, stride, spans", [
    (10, 4, 4, [(0, 4), (4, 8), (6, 10)]),               # the tail gets a window of its own
    (12, 4, 4, [(0, 4), (4, 8), (8, 12)]),               # tiles exactly: no extra window
    (10, 4, 3, [(0, 4), (3, 7), (6, 10)]),
    (10, 4, 2, [(0, 4), (2, 6), (4, 8), (6, 10)]),
    (9, 4, 6, [(0, 4), (5, 9)]),                         # stride above window: gap, then tail
    (3, 4, 4, [(0, 3)]),                                 # shorter than a window: one call
    (4, 4, 1, [(0, 4)]),
    (0, 4, 4, []),
])
def test_window_spans(length, window, stride, spans):
    assert list(window_spans(length, window, stride)) == spans


def test_window_spans_rejects_non_positive_sizes():
    with pytest.raises(ValueError, match="must be positive"):
        list(window_spans(10, 0, 1))
    with pytest.raises(ValueError, match="must be positive"):
        list(window_spans(10, 4, 0))


def test_batched_windows_equal_one_at_a_time_and_skip_all_n(tmp_path, seeded_one_thread):
    model, tok, _ = load_classifier(save_random_classifier(tmp_path / "m"))
    rng = np.random.default_rng(1)
    bases = "".join(rng.choice(list("ACGT"), 300))
    seq = bases[:100] + "N" * 120 + bases[100:200].lower()          # [120, 200) is N only
    source = open_sequences(write_fasta(tmp_path / "x.fa", {"r": seq, "short": "acgtN"}))

    one = list(predict_windows(model, tok, source, "r", window=40, stride=40, batch_size=1))
    spans = [s for batch, _ in one for s in batch]
    assert spans == [(0, 40), (40, 80), (80, 120), (200, 240), (240, 280), (280, 320)]
    probs_one = np.concatenate([p for _, p in one])                  # (6, C)
    batched = list(predict_windows(model, tok, source, "r", window=40, stride=40, batch_size=4))
    assert [len(b) for b, _ in batched] == [4, 2]
    np.testing.assert_allclose(np.concatenate([p for _, p in batched]), probs_one, atol=1e-6)
    np.testing.assert_allclose(probs_one.sum(1), 1.0, atol=1e-9)

    # Each window's probabilities are the softmax of the model's logits on its bases.
    ids = torch.stack([tok.encode(seq[a:b]) for a, b in spans])
    expected = torch.softmax(model(ids).double(), -1).detach().numpy()
    np.testing.assert_allclose(probs_one, expected, atol=1e-6)

    # Windows are read lazily: the first batch comes after reading only its own windows.
    fetched = []
    source.fetch = lambda *a, _fetch=source.fetch: fetched.append(a) or _fetch(*a)
    next(predict_windows(model, tok, source, "r", window=40, stride=40, batch_size=2))
    assert len(fetched) == 2

    records = {r.name: r for r in predict_records(model, tok, source, window=40, batch_size=4)}
    assert records["r"].windows == 6 and records["short"].windows == 1
    np.testing.assert_allclose(records["r"].mean_probs, probs_one.mean(0), atol=1e-9)


def error_line(capsys):
    """The error main() printed: it must be the last line of stderr, and one line."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[-1].startswith("mambaseq predict-species: error: "), lines
    return lines[-1]


def one_line_error(capsys, argv, *fragments):
    capsys.readouterr()
    assert main(argv) == 1
    err = error_line(capsys)
    for fragment in fragments:
        assert fragment in err, err


def check_rows(rows, classes):
    """Every window row: probabilities sum to 1 and ``predicted`` is the most probable class."""
    assert rows
    for row in rows:
        probs = np.array([float(row[c]) for c in classes])
        assert probs.sum() == pytest.approx(1.0, abs=1e-5)
        assert row["predicted"] == classes[int(probs.argmax())]


def test_predict_species_end_to_end(trained, tmp_path, capsys):
    """Through the command line (its smoke test), then as a function."""
    genomes, model_dir = trained["genomes"], trained["run"] / "model"
    a1, a2 = genomes["a"]                                   # two 1500-base chromosomes
    fasta = write_fasta(tmp_path / "new.fa", {
        "a1": a1[:1000],                                    # 1000 = 15 x 64 + 40: a tail window
        "gappy": a2[:200] + "N" * 300 + a2[500:700],        # windows inside the gap are skipped
        "short": a2[:50],                                   # shorter than a window: one call
        "gap_only": "N" * 100})                             # no usable window, no call
    out = tmp_path / "preds.tsv"
    assert main(["predict-species", "--model", str(model_dir), "--fasta", str(fasta),
                 "--out", str(out), "--window", "64", "--batch-size", "5"]) == 0
    printed = capsys.readouterr().out

    with open(out) as f:
        header = f.readline().rstrip("\n").split("\t")
    assert header == ["file", "record", "start", "end", "predicted", *CLASSES]
    rows = read_tsv(out)
    check_rows(rows, CLASSES)
    assert printed == (f"{len(rows)} windows of 4 records -> {out}; per record -> "
                       f"{tmp_path / 'preds.summary.tsv'}\n")
    spans = {}
    for row in rows:
        spans.setdefault(row["record"], []).append((int(row["start"]), int(row["end"])))
    assert spans["a1"] == [(s, s + 64) for s in range(0, 960, 64)] + [(936, 1000)]
    # the windows lying wholly inside the gap [200, 500) are skipped, those reaching a base kept
    assert spans["gappy"] == [(s, e) for s, e in window_spans(700, 64, 64) if s < 200 or e > 500]
    assert (192, 256) in spans["gappy"] and (256, 320) not in spans["gappy"]
    assert spans["short"] == [(0, 50)]
    assert "gap_only" not in spans

    summary = {r["record"]: r for r in read_tsv(tmp_path / "preds.summary.tsv")}
    assert list(summary) == ["a1", "gappy", "short", "gap_only"]
    for name, row in summary.items():
        assert int(row["windows"]) == len(spans.get(name, []))
    assert summary["gap_only"]["predicted"] == "" and summary["gap_only"]["a"] == ""
    assert int(summary["a1"]["length"]) == 1000
    mean = np.array([[float(r[c]) for c in CLASSES] for r in rows if r["record"] == "a1"]).mean(0)
    np.testing.assert_allclose([float(summary["a1"][c]) for c in CLASSES], mean, atol=1e-5)
    assert summary["a1"]["predicted"] == CLASSES[int(mean.argmax())]

    # Overlapping windows (stride < window) and a JSON summary.
    js = tmp_path / "s.json"
    result = predict_species(PredictSpeciesConfig(
        model=[str(model_dir)], fasta=[str(fasta)], out=str(tmp_path / "o.tsv"), window=64,
        stride=32, summary=str(js)))
    assert (result.out, result.summary, result.classes) == (tmp_path / "o.tsv", js, CLASSES)
    assert (result.window, result.stride) == (64, 32)
    assert [r.record for r in result.records] == ["a1", "gappy", "short", "gap_only"]
    overlapping = [r for r in read_tsv(tmp_path / "o.tsv") if r["record"] == "a1"]
    assert [int(r["start"]) for r in overlapping] == list(range(0, 937, 32)) + [936]
    check_rows(overlapping, CLASSES)
    report = {r["record"]: r for r in json.loads(js.read_text())}
    assert list(report.values()) == [dataclasses.asdict(r) for r in result.records]
    assert result.windows == sum(r["windows"] for r in report.values())
    assert report["a1"]["windows"] == len(overlapping)
    assert report["gap_only"]["windows"] == 0 and report["gap_only"]["predicted"] is None
    assert sum(report["short"]["mean_probabilities"].values()) == pytest.approx(1.0)


def test_a_classifier_trained_on_both_strands_calls_both_strands_alike(trained, tmp_path):
    """classify-species trains on both strands by default, so its model averages a window
    with its reverse complement: a record and its reverse complement get the same row."""
    from mambaseq.mamba_bio.tokenizers import reverse_complement
    model_dir = trained["run"] / "model"
    assert json.loads((model_dir / "config.json").read_text())["config"]["strand_average"]
    seq = trained["genomes"]["b"][0][100:164]
    fasta = write_fasta(tmp_path / "two.fa", {"fwd": seq, "rc": reverse_complement(seq)})
    out = tmp_path / "p.tsv"
    predict_species(PredictSpeciesConfig(model=[str(model_dir)], fasta=[str(fasta)],
                                         out=str(out), window=64))
    fwd, rc = ([float(r[c]) for c in CLASSES] for r in read_tsv(out))
    np.testing.assert_allclose(fwd, rc, atol=1e-5)


def test_plain_bgzip_and_gzip_fasta_give_the_same_rows(trained, tmp_path, monkeypatch):
    records = {"x": trained["genomes"]["b"][0][:300], "y": trained["genomes"]["c"][1][:130]}
    plain = write_fasta(tmp_path / "p.fa", records)
    text = plain.read_text()
    bgz = tmp_path / "b.fa.gz"
    with bgzf.BgzfWriter(str(bgz), "wb") as f:
        f.write(text)
    gz = tmp_path / "g.fa.gz"
    gz.write_bytes(gzip.compress(text.encode()))
    model = str(trained["run"] / "model")

    def predictions(fasta, **extra):
        out = tmp_path / f"{fasta.name}.tsv"
        predict_species(PredictSpeciesConfig(model=[model], fasta=[str(fasta)], out=str(out),
                                             window=64, **extra))
        return [{k: v for k, v in r.items() if k != "file"} for r in read_tsv(out)]

    expected = predictions(plain)
    assert len(expected) == 5 + 3                     # 300 = 4 x 64 + tail; 130 = 2 x 64 + tail
    assert predictions(bgz) == expected
    with pytest.raises(ValueError, match="plain gzip"):
        predict_species(PredictSpeciesConfig(model=[model], fasta=[str(gz)],
                                             out=str(tmp_path / "bad.tsv")))
    # decompress_gzip decompresses into a cache; keep that cache inside the test folder.
    monkeypatch.setattr(species, "open_sequences",
                        functools.partial(open_sequences, cache_dir=tmp_path / "cache"))
    assert predictions(gz, decompress_gzip=True) == expected

    # Several files in one call: rows of each, named by file.
    out = tmp_path / "both.tsv"
    predict_species(PredictSpeciesConfig(model=[model], fasta=[str(plain), str(bgz)],
                                         out=str(out), window=64))
    assert [r["file"] for r in read_tsv(out)] == [str(plain)] * 8 + [str(bgz)] * 8


def test_every_classifier_folder_predicts(trained, tmp_path):
    """OUT/model, OUT/checkpoints/best and every OUT/checkpoints/step_* serve predictions
    once they carry tokenizer.json and classes.json; a folder without them is named in a
    one-line error (checkpoint folders lack them until the trainer writes them: issue 17)."""
    run, fasta = trained["run"], trained["fastas"]["c"]
    folders = [run / "model", run / "checkpoints" / "best",
               *sorted((run / "checkpoints").glob("step_*"))]
    assert len(folders) == 4
    for i, folder in enumerate(folders):
        out = tmp_path / f"{i}.tsv"
        config = PredictSpeciesConfig(model=[str(folder)], fasta=[str(fasta)], out=str(out),
                                      window=64, stride=256)
        if (folder / CLASSES_FILE).is_file() and (folder / "tokenizer.json").is_file():
            predict_species(config)
            check_rows(read_tsv(out), CLASSES)
        else:
            with pytest.raises((FileNotFoundError, ValueError)) as err:
                predict_species(config)
            assert str(folder) in str(err.value) and ".json" in str(err.value)


def test_several_models_predict_as_their_normalised_geometric_mean(trained, tmp_path):
    """--model A B: each window's probabilities are the renormalised geometric mean of A's
    and B's (mean log-probabilities), and the rows say so (A and B differ)."""
    run, fasta = trained["run"], trained["fastas"]["b"]
    a, b = run / "model", sorted((run / "checkpoints").glob("step_*"))[0]
    source = open_sequences(fasta)
    name = source.names[0]
    seqs = [source.fetch(name, i, i + 64) for i in range(0, 640, 64)]
    (model_a, tok, _), (model_b, _, _) = load_classifier(a), load_classifier(b)
    p_a, p_b = (window_probabilities(m, tok, seqs) for m in (model_a, model_b))
    assert not np.allclose(p_a, p_b, atol=1e-4)
    expected = np.sqrt(p_a * p_b)
    expected /= expected.sum(1, keepdims=True)
    ensemble, _, classes = load_classifiers([a, b])
    np.testing.assert_allclose(window_probabilities(ensemble, tok, seqs), expected, atol=1e-6)

    out = tmp_path / "ens.tsv"
    predict_species(PredictSpeciesConfig(model=[str(a), str(b)], fasta=[str(fasta)],
                                         out=str(out), window=64))
    rows = [r for r in read_tsv(out) if r["record"] == name][:10]
    got = np.array([[float(r[c]) for c in classes] for r in rows])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_an_ensemble_needs_the_same_classes(trained, tmp_path):
    two = save_random_classifier(tmp_path / "two", n_classes=2)
    with pytest.raises(ValueError) as err:
        predict_species(PredictSpeciesConfig(model=[str(trained["run"] / "model"), str(two)],
                                             fasta=[str(trained["fastas"]["a"])],
                                             out=str(tmp_path / "p.tsv")))
    for fragment in (str(two), "are not those of", "same classes"):
        assert fragment in str(err.value)
    assert not (tmp_path / "p.tsv").exists()


def test_one_line_errors(trained, tmp_path, capsys):
    model, fasta = trained["run"] / "model", str(trained["fastas"]["a"])
    out = ["--out", str(tmp_path / "p.tsv")]

    lm = tmp_path / "lm"
    tok = CharTokenizer()
    core.MambaLM(core.MambaLMConfig(vocab_size=tok.vocab_size, d_model=8, n_layer=1,
                                    d_state=4)).save_pretrained(lm)
    tok.save(lm)
    one_line_error(capsys, ["predict-species", "--model", str(lm), "--fasta", fasta, *out],
                   str(lm), "MambaLM", "not a species classifier")

    no_classes = tmp_path / "no_classes"
    save_random_classifier(no_classes)
    (no_classes / CLASSES_FILE).unlink()
    one_line_error(capsys, ["predict-species", "--model", str(no_classes), "--fasta", fasta,
                            *out], str(no_classes), "no classes.json")
    one_line_error(capsys, ["predict-species", "--model", str(tmp_path / "nowhere"),
                            "--fasta", fasta, *out], "model folder not found")

    gaps = write_fasta(tmp_path / "gaps.fa", {"g1": "N" * 500, "g2": "n" * 30, "empty": ""})
    one_line_error(capsys, ["predict-species", "--model", str(model), "--fasta", fasta,
                            str(gaps), *out], str(gaps), "no usable window")
    assert not (tmp_path / "p.tsv").exists()          # no half-written output is left

    missing = tmp_path / "missing.fa"
    one_line_error(capsys, ["predict-species", "--model", str(model), "--fasta", str(missing),
                            *out], "sequence file not found", str(missing))
    # refused by the config, named by its flag on the command line (a usage error: exit 2)
    with pytest.raises(SystemExit) as exit_:
        main(["predict-species", "--model", str(model), "--fasta", fasta, "--window", "0", *out])
    assert exit_.value.code == 2
    assert "argument --window: must be a positive integer, got 0" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"^PredictSpeciesConfig.window must be a positive "
                                          r"integer, got 0$"):
        PredictSpeciesConfig(model=[str(model)], fasta=[fasta], out="p.tsv", window=0)
    assert main(["predict-species", "--model", str(model), "--fasta", fasta,
                 "--summary", str(tmp_path / "s.csv"), *out]) == 2
    assert error_line(capsys).endswith(f"argument --summary: must end in .tsv or .json, got "
                                       f"{tmp_path / 's.csv'}")
    assert not (tmp_path / "p.tsv").exists()


PEAK_RSS_CHILD = textwrap.dedent("""
    import sys
    from mambaseq.pipelines.cli import main
    code = main(sys.argv[1:])
    status = open("/proc/self/status").read()
    print("VmHWM_kB", status.split("VmHWM:")[1].split()[0], "exit", code)
""")


def peak_rss_of_prediction(tmp_path, length, window=1000):
    """Predict a ``length``-base record in a child process; returns (peak RSS in bytes of the
    child, as its kernel counted it, and the window rows written)."""
    rng = np.random.default_rng(0)
    seq = "".join(np.array(list("ACGT"))[rng.integers(0, 4, length)])
    fasta = write_fasta(tmp_path / "long.fa", {"chrL": seq}, line_width=80)
    del seq
    model = save_random_classifier(tmp_path / "model")
    out = tmp_path / "long.tsv"
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_CHILD, "predict-species", "--model", str(model),
         "--fasta", str(fasta), "--out", str(out), "--window", str(window),
         "--batch-size", "64"],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    last = done.stdout.strip().splitlines()[-1].split()
    assert done.returncode == 0 and last[3] == "0", done.stderr[-2000:]
    with open(out) as f:
        n_rows = sum(1 for _ in f) - 1
    return int(last[1]) * 1024, n_rows


def test_a_long_record_predicts_in_bounded_memory(tmp_path):
    """300 kb at 1 kb windows: the whole run (Python, torch, the model) stays under 2 GB
    (the 6 Mb case is the slow test below)."""
    peak, rows = peak_rss_of_prediction(tmp_path, 300_000)
    assert rows == 300
    assert peak < 2 * 2 ** 30


@pytest.mark.slow
def test_a_6_mb_chromosome_predicts_in_under_2_gb(tmp_path):
    peak, rows = peak_rss_of_prediction(tmp_path, 6_000_000)
    assert rows == 6000
    assert peak < 2 * 2 ** 30
