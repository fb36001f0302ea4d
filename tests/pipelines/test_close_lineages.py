"""The close-lineages recipe (issue 30): the preset resolved into config.json with explicit
options winning, the sequence-length warmup of a species classifier (each stage at the step
it names, a resume inside a stage bitwise-equal), the exact-k-mer baseline in the report and
in accuracy against window length."""
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mambaseq.mamba_bio.datasets import SpeciesWindows
from mambaseq.mamba_bio.fasta import open_sequences
from mambaseq.mamba_bio.metrics import accuracy_by_length, plot_accuracy_vs_length
from mambaseq.mamba_bio.species import build_classifier, classify_loss
from mambaseq.mamba_bio.tokenizers import CharTokenizer
from mambaseq.pipelines.cli import main
from mambaseq.pipelines.species import PRESETS, ClassifySpeciesConfig
from mambaseq.pipelines.training import TrainConfig, seed_everything, train
from mambaseq.pipelines.training import checkpoints as ckpt
from species_data import TINY, simulated_species

PRESET = PRESETS["close-lineages"]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    return simulated_species(tmp_path_factory.mktemp("sim"), length=3000, seed=5)[1]


def test_preset_fills_the_defaults_and_an_explicit_option_wins():
    species = ["a=a.fa", "b=b.fa"]
    config = ClassifySpeciesConfig.from_preset("close-lineages", species=species, out="x",
                                               steps=300, pooling="max")
    assert config == ClassifySpeciesConfig(preset="close-lineages", species=species, out="x",
                                           steps=300, pooling="max")
    assert (config.steps, config.pooling) == (300, "max")              # given: kept
    for key, value in PRESET.items():
        if key not in ("steps", "pooling"):
            assert getattr(config, key) == value, key
    assert config.shape_at(0) == (1024, 16) and config.shape_at(10_000) == (32768, 1)
    plain = ClassifySpeciesConfig(species=species, out="x")
    assert (plain.seq_len, plain.fractions, plain.exact_k) == (1000, (0.8, 0.1, 0.1), 31)


def test_classify_species_preset_writes_its_options_to_config_json(sim, tmp_path, capsys):
    out = tmp_path / "run"
    main(["classify-species", "--preset", "close-lineages", "--out", str(out),
          "--species", *[f"{k}={v}" for k, v in sim.items()], *TINY,
          "--steps", "3", "--seq-len", "128", "--batch-size", "1",
          "--seq-len-schedule", "1:32:4,1:64:2", "--eval-every", "0", "--eval-per-class", "2",
          "--baseline-per-class", "3", "--eval-lengths", "64", "256", "--exact-k", "21",
          "--kmer", "2", "--ngram", "3"])
    saved = json.loads((out / "config.json").read_text())
    given = {"steps": 3, "seq_len": 128, "batch_size": 1, "seq_len_schedule": "1:32:4,1:64:2",
             "eval_every": 0, "eval_per_class": 2, "baseline_per_class": 3,
             "eval_lengths": [64, 256], "exact_k": 21, "d_model": 8, "n_layer": 1,
             "warmup_steps": 1, "kmer": 2, "ngram": 3}
    assert saved["preset"] == "close-lineages"
    for key, value in PRESET.items():
        expected = given.get(key, list(value) if isinstance(value, tuple) else value)
        assert saved[key] == expected, key
    shapes = [r["seq_len"] for r in map(json.loads, (out / "metrics.jsonl").read_text()
                                         .splitlines()) if "seq_len" in r]
    assert shapes == [32, 64, 128]                        # log_every 1: every step's window
    report = json.loads((out / "report.json").read_text())
    assert report["exact_kmer"]["method"].startswith("exact shared canonical 21-mers")
    assert 0 <= report["exact_kmer_accuracy"] <= 1
    rows = json.loads((out / "accuracy_vs_length.json").read_text())["rows"]
    assert [r["length"] for r in rows] == [64, 256]
    assert all({"exact_kmer_accuracy", "exact_kmer_accuracy_sd"} <= set(r) for r in rows)
    assert all(r["per_part"][0]["test_windows"] == r["test_windows"] > 0 for r in rows)
    summary = json.loads(capsys.readouterr().out)
    assert summary["exact_kmer_accuracy"] == report["exact_kmer_accuracy"]


def test_accuracy_by_length_carries_the_exact_kmer_baseline(tmp_path):
    labels = np.array([0, 1, 1, 0])
    part = lambda exact: {100: {"labels": labels, "pred": labels,  # noqa: E731
                                "baseline_pred": np.zeros(4, int), "exact_pred": np.array(exact)}}
    (row,) = accuracy_by_length([part([0, 1, 0, 0]), part([1, 0, 0, 1])])
    assert row["exact_kmer_accuracy"] == pytest.approx(0.375)
    assert [p["exact_kmer_accuracy"] for p in row["per_part"]] == [0.75, 0.0]
    assert row["exact_kmer_accuracy_sd"] == pytest.approx(np.std([0.75, 0.0], ddof=1))
    assert [p["test_windows"] for p in row["per_part"]] == [4, 4] and row["test_windows"] == 8
    plot_accuracy_vs_length([row], tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 1000


def _warmup_run(sim, out, **kw):
    """A tiny species classifier trained through a three-stage sequence-length warmup."""
    species = {k: [open_sequences(v)] for k, v in sim.items()}
    data = SpeciesWindows(species, fractions=(0.8, 0.1, 0.1), by="position", seed=2)
    seen = {}

    def get_batch(index, seq_len, batch_size, rank=0, world_size=1):
        seen[index] = (seq_len, batch_size)
        return data.get_batch(index, seq_len, batch_size, rank, world_size)

    seed_everything(0)
    model = build_classifier(CharTokenizer(), 3, d_model=8, n_layer=1, d_state=4, ngram=3)
    cfg = TrainConfig(out=str(out), steps=9, seq_len=128, batch_size=1, lr=1e-2,
                      warmup_steps=1, save_every=4, eval_every=0, log_every=1, keep_last=5,
                      device="cpu", seq_len_schedule="3:32:4,3:64:2", **kw)
    train(model, classify_loss, get_batch, cfg)
    return seen


def test_warmup_reaches_each_stage_at_its_step_and_resumes_inside_a_stage_bitwise(sim,
                                                                                  tmp_path):
    whole = tmp_path / "whole"
    seen = _warmup_run(sim, whole)
    assert [seen[i] for i in range(9)] == [(32, 4)] * 3 + [(64, 2)] * 3 + [(128, 1)] * 3
    # interrupted at step 4, inside the second stage: keep only that checkpoint
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    shutil.rmtree(cut / "model")
    for step, path in ckpt.list_checkpoints(cut / "checkpoints"):
        if step > 4:
            shutil.rmtree(path)
    assert [s for s, _ in ckpt.list_checkpoints(cut / "checkpoints")] == [4]
    resumed = _warmup_run(sim, cut, resume=True)
    assert sorted(resumed) == list(range(4, 9))           # steps 4.. redone, from the stage
    assert [resumed[i] for i in range(4, 9)] == [(64, 2)] * 2 + [(128, 1)] * 3
    a = load_file(whole / "model" / "model.safetensors")
    b = load_file(cut / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_option_given_at_its_ordinary_default_wins_over_the_preset(tmp_path):
    """steps 500 is classify-species' default: named in Python or on the command line, it
    is kept, not replaced by the preset's 700."""
    species = ["a=a.fa", "b=b.fa"]
    config = ClassifySpeciesConfig.from_preset("close-lineages", species=species, out="x",
                                               steps=500, pooling="mean")
    assert (config.steps, config.pooling, config.seq_len) == (500, "mean", PRESET["seq_len"])
    from mambaseq.pipelines import cli
    from mambaseq.pipelines.cli.options import config_from_args, given_options
    module = cli.load_command("classify-species")
    parser = cli.build_parser("classify-species", module)
    argv = ["--preset", "close-lineages", "--species", *species, "--out", "x", "--steps=500",
            "--pooling", "mean"]
    parsed = config_from_args(module.CONFIG, parser.parse_args(argv),
                              given_options(parser, argv))
    assert parsed == config and parsed.preset == "close-lineages"
