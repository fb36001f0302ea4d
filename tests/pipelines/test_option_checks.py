"""Settings that would make a silently wrong model are refused (issue 26, items 5 and 7).

- every numeric option has a rule (finite, range) that argparse, ``--config`` files and the
  config dataclass (``TrainConfig``) all apply, naming the option or the field;
- a run whose loss or weights go non-finite stops with one line and keeps its last good
  checkpoint (no checkpoint, best/ or model/ from NaN weights);
- ``--resume`` trains on the split the run started with, or refuses naming what changed.
"""
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mambaseq.mamba_audio.synth import write_demo_corpus
from mambaseq.pipelines.training import checkpoints as ckpt
from mambaseq.pipelines import cli, genome
from mambaseq.pipelines.training.config import TrainConfig
from mambaseq.pipelines.training.loop import train

pytestmark = pytest.mark.usefixtures("one_thread_module")

TINY = ["--steps", "2", "--seq-len", "64", "--batch-size", "2", "--d-model", "16",
        "--n-layer", "1", "--device", "cpu"]

# (subcommand, the arguments it requires, option, bad value): parsing alone must refuse it.
GENOME = ["pretrain-genome", ["--fasta", "x.fa", "--out", "o"]]
AUDIO = ["train-audio", ["--data", "d", "--out", "o"]]
WORDS = ["train-word-classifier", ["--data", "d", "--out", "o"]]
SPECIES = ["classify-species", ["--species", "a=x.fa", "b=y.fa", "--out", "o"]]
GENERATE = ["generate-audio", ["--model", "m", "--out", "o"]]
EVAL_AUDIO = ["eval-audio", ["--model", "m", "--data", "d"]]
BAD_OPTIONS = [
    (*GENOME, "--weight-decay", "nan"), (*GENOME, "--weight-decay", "-0.1"),
    (*GENOME, "--min-lr-ratio", "nan"), (*GENOME, "--min-lr-ratio", "-3"),
    (*GENOME, "--min-lr-ratio", "1.5"), (*GENOME, "--grad-clip", "-1"),
    (*GENOME, "--grad-clip", "inf"), (*GENOME, "--lr", "inf"), (*GENOME, "--seed", "-1"),
    (*GENOME, "--max-n-frac", "nan"), (*GENOME, "--val-bases", "0"), (*GENOME, "--d-state", "0"),
    (*AUDIO, "--val-fraction", "nan"), (*AUDIO, "--val-fraction", "1"), (*AUDIO, "--bits", "0"),
    (*AUDIO, "--bits", "17"), (*AUDIO, "--sample-rate", "0"), (*AUDIO, "--val-batches", "0"),
    (*AUDIO, "--split-seed", "-2"),
    (*WORDS, "--clip-seconds", "nan"), (*WORDS, "--shift-ms", "-5"),
    (*WORDS, "--mu-law-bits", "17"), (*WORDS, "--group-size", "-1"),
    (*SPECIES, "--substitution-rate", "nan"), (*SPECIES, "--substitution-rate", "1"),
    (*SPECIES, "--kmer", "40"), (*SPECIES, "--eval-tokens", "0"), (*SPECIES, "--ngram", "-1"),
    (*SPECIES, "--pretrain-steps", "-3"), (*SPECIES, "--eval-lengths", "0"),
    (*SPECIES, "--folds", "-2"),
    (*GENERATE, "--temperature", "nan"), (*GENERATE, "--temperature", "-1"),
    (*GENERATE, "--threads", "-4"), (*GENERATE, "--prime-seconds", "-5"),
    (*GENERATE, "--prime-seconds", "nan"), (*GENERATE, "--top-p", "0"),
    (*GENERATE, "--top-p", "1.5"), (*GENERATE, "--top-k", "0"), (*GENERATE, "--seed", "-1"),
    (*EVAL_AUDIO, "--threads", "-1"), (*EVAL_AUDIO, "--chunk-size", "0"),
    (*EVAL_AUDIO, "--max-files", "-1"),
    ("bench", ["scan"], "--threads", "-4"), ("demo", [], "--steps", "0"),
]


@pytest.mark.parametrize("command, required, option, value", BAD_OPTIONS)
def test_a_bad_number_is_refused_naming_its_option(capsys, tmp_path, command, required,
                                                   option, value):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, *required, f"{option}={value}"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert f"argument {option}: must be " in err and f"got {value}" in err, err
    assert not (tmp_path / "o").exists()


def test_the_fractions_of_classify_species_are_shares(capsys):
    with pytest.raises(SystemExit):
        cli.main([*SPECIES[:1], *SPECIES[1], "--fractions", "0.8", "nan", "0.2"])
    assert "argument --fractions: must be a finite number in [0, 1], got nan" in \
        capsys.readouterr().err


def test_a_config_file_goes_through_the_same_rules(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"fasta": "x.fa", "min_lr_ratio": -3}))
    assert cli.main(["pretrain-genome", "--config", str(config), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "option 'min_lr_ratio': invalid value -3: must be a finite number in [0, 1]" in err


@pytest.mark.parametrize("field, value, rule", [
    ("weight_decay", math.nan, "a finite number >= 0"),
    ("min_lr_ratio", math.nan, "a finite number in [0, 1]"),
    ("min_lr_ratio", -3.0, "a finite number in [0, 1]"),
    ("grad_clip", -1.0, "a finite number >= 0"),
    ("lr", math.inf, "a finite number > 0"),
    ("warmup_steps", -1, "an integer >= 0"),
    ("keep_last", 0, "a positive integer"),
    ("seed", -1, "an integer in [0, 4294967295]"),
])
def test_train_config_refuses_the_same_values_naming_the_field(field, value, rule):
    with pytest.raises(ValueError) as err:
        TrainConfig(out="o", **{field: value})
    assert str(err.value) == f"TrainConfig.{field} must be {rule}, got {value!r}"


# -- a run that goes non-finite --------------------------------------------------------

VOCAB = 8


class Tiny(nn.Module):
    """(B, L) ids -> (B, L, VOCAB) logits."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8)
        self.out = nn.Linear(8, VOCAB)

    def forward(self, x):
        return self.out(self.embed(x))

    def save_pretrained(self, path, extra_json=None):
        Path(path).mkdir(parents=True, exist_ok=True)
        Path(path, "weights.pt").write_bytes(b"")


def _batch(index, seq_len, batch_size, rank, world_size):
    g = torch.Generator().manual_seed(index)
    return torch.randint(0, VOCAB, (batch_size, seq_len + 1), generator=g)


def _loss(model, batch, poison=False):
    logits = model(batch[:, :-1])
    if poison:        # a finite loss whose gradients are NaN: the step breaks the weights
        logits.register_hook(lambda g: g * math.nan)
    return F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten()), batch.numel()


def _cfg(out, **kw):
    return TrainConfig(**{"out": str(out), "steps": 4, "batch_size": 2, "seq_len": 8,
                          "warmup_steps": 1, "save_every": 2, "eval_every": 2, "device": "cpu",
                          **kw})


def test_a_nan_validation_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    vals = iter([1.0, math.nan])
    with pytest.raises(FloatingPointError) as err:
        train(Tiny(), _loss, _batch, _cfg(tmp_path), eval_fn=lambda m: {"val_loss": next(vals)})
    last_good = tmp_path / "checkpoints" / "step_0000002"
    assert str(err.value).startswith(f"the validation loss is nan at step 4: stopped without "
                                     f"saving (the last good checkpoint, {last_good}, is kept)")
    assert "lower lr" in str(err.value) and "\n" not in str(err.value)
    assert [p.name for _, p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == ["step_0000002"]
    assert json.loads((tmp_path / "checkpoints" / ckpt.BEST / "metrics.json").read_text())[
        "step"] == 2
    assert not (tmp_path / "model").exists()


def test_nan_weights_after_a_finite_loss_are_never_saved(tmp_path):
    calls = []

    def loss_fn(model, batch):
        calls.append(1)
        return _loss(model, batch, poison=len(calls) == 4)      # the last step's update

    with pytest.raises(FloatingPointError, match=r"^the weights are not finite \(\d+ tensors, "
                                                 r"e\.g\. .+\) at step 4: stopped"):
        train(Tiny(), loss_fn, _batch, _cfg(tmp_path, eval_every=0))
    assert [p.name for _, p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == ["step_0000002"]
    assert not (tmp_path / "model").exists()


def _fasta(path, n_bases, seed=0):
    """One record of ``n_bases`` random bases (no index beside it)."""
    g = torch.Generator().manual_seed(seed)
    bases = "".join("ACGT"[i] for i in torch.randint(0, 4, (n_bases,), generator=g).tolist())
    path.write_text(">chr1\n" + "\n".join(bases[i:i + 60] for i in range(0, n_bases, 60)) + "\n")
    for index in path.parent.glob(path.name + ".*"):
        index.unlink()
    return path


def test_a_nan_validation_loss_fails_the_command_in_one_line(tmp_path, capsys, monkeypatch):
    make_eval = genome.clm_eval

    def nan_at_second(*args):
        real, calls = make_eval(*args), []
        return lambda model: calls.append(1) or (real(model) if len(calls) == 1
                                                 else {"val_loss": math.nan})

    monkeypatch.setattr(genome, "clm_eval", nan_at_second)
    out = tmp_path / "lm"
    assert cli.main(["pretrain-genome", "--fasta", str(_fasta(tmp_path / "g.fa", 2000)),
                     "--out", str(out), *TINY, "--eval-every", "1", "--save-every", "1",
                     "--warmup-steps", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("mambaseq pretrain-genome: error: FloatingPointError: the validation "
                          "loss is nan at step 2"), err
    assert [p.name for _, p in ckpt.list_checkpoints(out / "checkpoints")] == ["step_0000001"]
    assert not (out / "model").exists() and not (out / "report.json").exists()


# -- --resume keeps the run's split ------------------------------------------------------

TINY_AUDIO = ["--preset", "tiny", "--seq-len", "64", "--batch-size", "2", "--val-batches", "1",
              "--save-every", "1", "--eval-every", "2", "--device", "cpu"]


def test_train_audio_resume_keeps_its_split_when_speakers_are_added(tmp_path, capsys):
    data, run = tmp_path / "data", tmp_path / "run"
    write_demo_corpus(data, n_speakers=3, clips_per_speaker=2, seconds=0.1, sample_rate=8000)
    assert cli.main(["train-audio", "--data", str(data), "--out", str(run), "--steps", "2",
                     *TINY_AUDIO]) == 0
    split = (run / "split.json").read_text()
    assert any("_spk2_" in f for f in json.loads(split)["train"])
    # new speakers: a fresh split of these 5 speakers holds out spk2, which the run trained on
    write_demo_corpus(data, n_speakers=5, clips_per_speaker=2, seconds=0.1, sample_rate=8000)
    capsys.readouterr()
    assert cli.main(["train-audio", "--data", str(data), "--out", str(run), "--steps", "3",
                     "--resume", *TINY_AUDIO]) == 0
    assert (run / "split.json").read_text() == split
    err = capsys.readouterr().err
    assert f"[mambaseq] resume keeps the run's split {run / 'split.json'}: 4 file(s) added" in err

    gone = Path(json.loads(split)["train"][0])
    gone.unlink()
    assert cli.main(["train-audio", "--data", str(data), "--out", str(run), "--steps", "4",
                     "--resume", *TINY_AUDIO]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"train-audio: error: resume: {gone} (1 file(s) in all) of the run's split" in err
    assert (run / "split.json").read_text() == split


def test_pretrain_genome_resume_refuses_inputs_that_give_another_split(tmp_path, capsys):
    fasta, out = _fasta(tmp_path / "g.fa", 2000), tmp_path / "lm"
    argv = ["pretrain-genome", "--fasta", str(fasta), "--out", str(out), *TINY,
            "--save-every", "1", "--val-bases", "500"]
    assert cli.main(argv) == 0
    split = (out / "split.bed").read_text()
    assert "\tval\t" in split and "\ttrain\t" in split
    assert cli.main([*argv, "--resume", "--steps", "3"]) == 0        # same inputs: resumes

    _fasta(fasta, 3000)                                             # the record grew
    capsys.readouterr()
    assert cli.main([*argv, "--resume", "--steps", "4"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert (f"resume: the split derived from fasta/bed is not the run's own "
            f"{out / 'split.bed'} (2 gone, e.g. train chr1:0-1800 of {fasta.resolve()}") in err
    assert (out / "split.bed").read_text() == split
    assert [p.name for _, p in ckpt.list_checkpoints(out / "checkpoints")][-1] == "step_0000003"

