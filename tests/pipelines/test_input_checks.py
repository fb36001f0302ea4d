"""Inputs that would make a silently wrong model, or cost gigabytes before saying so, are
refused in one line naming the file (issue 26): a model folder whose config.json disagrees
with its weights (checked from the safetensors header before anything is built), broken or
escaping hub folders, implausible or mixed audio sample rates, audio files of formats not
read, and a predict-species window that is not the classifier's own."""
import csv
import functools
import json
import logging

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file, save_file

from mambaseq import core
from mambaseq.core import MambaLM, MambaLMConfig
from mambaseq.core.hub import ConversionError, export_hf_mamba, read_hub_folder
from mambaseq.mamba_audio.datasets import find_audio_files, scan_audio_folder
from mambaseq.mamba_audio.io import AudioFileError, common_sample_rate, load_audio, save_audio
from mambaseq.mamba_audio.synth import write_demo_corpus
from mambaseq.mamba_bio.predict import load_classifier
from mambaseq.mamba_bio.tokenizers import CharTokenizer
from mambaseq.pipelines import cli
from mambaseq.pipelines.training.checkpoints import load_model
from mambaseq.pipelines.conversion import convert_model

pytestmark = pytest.mark.usefixtures("seeded_one_thread")


class BuiltForReal(Exception):
    """Raised by a model constructor that should only have run on the meta device."""


def forbid_real_builds(monkeypatch, cls, **when):
    """Make ``cls(...)`` raise ``BuiltForReal`` when called off the meta device with the
    keyword values ``when`` (e.g. d_model=8000): a check that runs before the real build
    never trips it."""
    init = cls.__init__

    @functools.wraps(init)                          # the same signature (device= included)
    def guarded(self, *args, **kwargs):
        if str(kwargs.get("device")) != "meta" and all(kwargs.get(k) == v for k, v in when.items()):
            raise BuiltForReal(f"{cls.__name__}({when}) built with memory")
        init(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__init__", guarded)


def one_line_error(capsys, argv, *fragments):
    assert cli.main(argv) != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[-1].startswith(f"mambaseq {argv[0]}: error: "), lines
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])
    return lines[-1]


# -- a model folder whose config.json disagrees with its weights (item 8) -----------------------
def tiny_lm_folder(folder):
    MambaLM(MambaLMConfig(vocab_size=9, d_model=16, n_layer=1, d_state=4)).save_pretrained(folder)
    return folder


def edit_config(folder, **changes):
    path = folder / "config.json"
    payload = json.loads(path.read_text())
    payload["config"].update(changes)
    path.write_text(json.dumps(payload))


def test_a_config_wider_than_its_weights_is_refused_before_any_real_build(tmp_path,
                                                                          monkeypatch):
    folder = tiny_lm_folder(tmp_path / "lm")
    edit_config(folder, d_model=8000)              # 14 kB of weights, a 2 GB model
    forbid_real_builds(monkeypatch, MambaLM, d_model=8000)
    with pytest.raises(ValueError) as err:
        load_model(folder)
    message = str(err.value)
    assert str(folder / "model.safetensors") in message and str(folder / "config.json") in message
    assert "embedding.weight has shape (9, 16), the config implies (9, 8000)" in message
    assert "\n" not in message


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    folder = tiny_lm_folder(tmp_path / "lm")
    weights = folder / "model.safetensors"
    state = load_file(str(weights))
    save_file({k: v for k, v in state.items() if k != "backbone.norm_f.weight"}, str(weights))
    with pytest.raises(ValueError, match="tensor backbone.norm_f.weight missing"):
        load_model(folder)
    save_file({**state, "backbone.layers.1.norm.weight": torch.ones(16)}, str(weights))
    with pytest.raises(ValueError, match="unexpected tensor backbone.layers.1.norm.weight"):
        load_model(folder)
    weights.write_bytes(weights.read_bytes()[:-10])                      # cut off
    with pytest.raises(ValueError, match="model.safetensors: not a readable safetensors file"):
        load_model(folder)


def test_shared_projections_still_load_from_their_one_stored_copy(tmp_path):
    """A bidirectional classifier's two directions share in/out projections, stored once."""
    tok = CharTokenizer()
    model = core.SequenceClassifier(core.SequenceClassifierConfig(
        vocab_size=tok.vocab_size, d_model=16, n_layer=1, num_classes=3, bidirectional=True,
        d_state=4))
    model.save_pretrained(tmp_path / "c")
    assert len(load_file(str(tmp_path / "c" / "model.safetensors"))) < len(model.state_dict())
    again = load_model(tmp_path / "c")
    assert torch.equal(again.backbone.layers[0].mixer.rev.in_proj.weight,
                       model.backbone.layers[0].mixer.fwd.in_proj.weight)


# -- hub folders: unreadable files named, shard paths kept inside the folder (item 13) ----------
def hf_folder(folder):
    export_hf_mamba(MambaLM(MambaLMConfig(vocab_size=9, d_model=16, n_layer=1, d_state=4)), folder)
    return folder


def test_convert_names_a_truncated_weights_file_and_a_broken_config(tmp_path, capsys):
    src = hf_folder(tmp_path / "hf")
    weights = src / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    one_line_error(capsys, ["convert", str(src), "--out", str(tmp_path / "o")],
                   str(weights), "not a readable safetensors file")
    weights.write_bytes(data)
    (src / "config.json").write_text('{"model_type": "mamba", ')
    one_line_error(capsys, ["convert", str(src), "--out", str(tmp_path / "o")],
                   str(src / "config.json"), "not valid JSON")
    (src / "config.json").write_text("[1, 2]")
    one_line_error(capsys, ["convert", str(src), "--out", str(tmp_path / "o")],
                   str(src / "config.json"), "expected a JSON object")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("escape", ["../outside.safetensors", "/ABS"])
def test_a_shard_index_cannot_read_outside_the_folder(tmp_path, escape):
    src = hf_folder(tmp_path / "hf")
    outside = tmp_path / "outside.safetensors"           # a valid file: the old code read it
    (src / "model.safetensors").rename(outside)
    name = str(outside) if escape == "/ABS" else escape
    state = load_file(str(outside))
    (src / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: name for k in state}}))
    with pytest.raises(ConversionError, match="not a file inside"):
        read_hub_folder(src)
    # inside the folder, a shard in a subfolder is read
    (src / "shards").mkdir()
    outside.rename(src / "shards" / "one.safetensors")
    (src / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: "shards/one.safetensors" for k in state}}))
    assert set(read_hub_folder(src)[1]) == set(state)


def test_a_hub_config_that_disagrees_with_its_weights_builds_nothing(tmp_path, monkeypatch):
    src = hf_folder(tmp_path / "hf")
    config = json.loads((src / "config.json").read_text())
    forbid_real_builds(monkeypatch, MambaLM, d_model=8000)
    (src / "config.json").write_text(json.dumps({**config, "hidden_size": 8000,
                                                 "intermediate_size": 16000}))
    with pytest.raises(ConversionError, match=r"has shape .*the config implies"):
        convert_model(src)
    (src / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 100_000}))
    with pytest.raises(ConversionError, match="num_hidden_layers is 100000, but the weights "
                                              "hold 1 layers"):
        convert_model(src)
    (src / "config.json").write_text(json.dumps({**config, "hidden_size": "16"}))
    with pytest.raises(ConversionError, match="config.json: hidden_size must be a positive "
                                              "integer, got '16'"):
        convert_model(src)
    (src / "config.json").write_text(json.dumps(config))
    assert isinstance(convert_model(src)[0], MambaLM)


# -- audio sample rates (item 9) ---------------------------------------------------------------
def wav_with_rate(path, rate, seconds_of_8k=0.05):
    """A valid 8 kHz PCM-16 wav whose header then says ``rate`` (bytes 24-27 the sample rate,
    28-31 the byte rate), as a corrupt or hand-made file would."""
    save_audio(path, torch.sin(torch.arange(int(8000 * seconds_of_8k)) * 0.3) * 0.5, 8000)
    data = bytearray(path.read_bytes())
    assert data[24:28] == (8000).to_bytes(4, "little")
    data[24:28] = rate.to_bytes(4, "little")
    data[28:32] = (rate * 2).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("rate", [1, 100_000_000])
def test_an_implausible_header_rate_is_refused_naming_the_file(tmp_path, rate):
    path = wav_with_rate(tmp_path / "odd.wav", rate)
    assert sf.info(str(path)).samplerate == rate         # soundfile takes it as it is
    for read in (lambda: load_audio(path), lambda: load_audio(path, sample_rate=8000),
                 lambda: common_sample_rate([path])):
        with pytest.raises(AudioFileError, match=f"{path}: sample rate {rate} Hz is outside "
                                                 "1000 to 384000 Hz"):
            read()
    with pytest.raises(ValueError, match="sample_rate"):
        load_audio(tmp_path / "odd.wav", sample_rate=rate)


TINY_AUDIO = ["--preset", "tiny", "--seq-len", "64", "--batch-size", "2", "--steps", "1",
              "--val-batches", "1", "--device", "cpu", "--test-speakers", "spk1"]


def test_train_audio_refuses_a_one_hertz_file_and_an_implausible_rate(tmp_path, capsys):
    data = tmp_path / "data"
    files = write_demo_corpus(data, n_speakers=2, clips_per_speaker=2, seconds=0.1)
    wav_with_rate(files[0], 1)
    one_line_error(capsys, ["train-audio", "--data", str(data), "--out", str(tmp_path / "r"),
                            *TINY_AUDIO], str(files[0]), "sample rate 1 Hz")
    save_audio(files[0], torch.zeros(800), 8000)
    one_line_error(capsys, ["train-audio", "--data", str(data), "--out", str(tmp_path / "r2"),
                            "--sample-rate", "500", *TINY_AUDIO],
                   "argument --sample-rate: must be a rate from 1000 to 384000 Hz, got 500")
    assert not (tmp_path / "r2" / "model").exists()


def test_files_of_different_rates_need_an_explicit_rate(tmp_path):
    data = tmp_path / "data"
    files = write_demo_corpus(data, n_speakers=2, clips_per_speaker=2, seconds=0.1)
    assert common_sample_rate(files) == 8000
    save_audio(files[2], torch.zeros(1600), 16000)
    with pytest.raises(ValueError, match=f"{files[2]}: 16000 Hz, but {files[0]} is 8000 Hz; "
                                         "give the sample rate"):
        common_sample_rate(files)


def test_a_nan_sample_is_refused_naming_the_file_and_frame(tmp_path):
    path = tmp_path / "nan.wav"
    samples = np.zeros(100, dtype=np.float32)
    samples[37] = np.nan
    sf.write(str(path), samples, 8000, subtype="FLOAT")
    with pytest.raises(AudioFileError, match=f"{path}: non-finite sample .* at frame 37"):
        load_audio(path)


# -- audio files of formats not read are counted, not silently dropped (item 14b) ---------------
def test_skipped_audio_files_are_counted_and_said(tmp_path, caplog):
    data = tmp_path / "data"
    files = write_demo_corpus(data, n_speakers=2, clips_per_speaker=1, seconds=0.1)
    for name in ("a.mp3", "b.mp3", "sub/c.m4a"):
        (data / name).parent.mkdir(exist_ok=True)
        (data / name).write_bytes(b"ID3 not decoded")
    (data / "README.txt").write_text("not audio, not counted")
    folder = scan_audio_folder(data)
    assert folder.files == files
    assert [p.name for p in folder.skipped] == ["a.mp3", "b.mp3", "c.m4a"]
    with caplog.at_level(logging.WARNING):
        assert find_audio_files(data) == files
    [record] = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert (f"{data}: skipped 3 audio file(s) in formats not read (1 .m4a, 2 .mp3; only .wav, "
            ".flac, .ogg are)") in record.getMessage()
    for f in files:
        f.unlink()
    with pytest.raises(FileNotFoundError, match="no audio files .* found; .*skipped 3"):
        find_audio_files(data)


# -- predict-species uses the classifier's own window (item 14c) --------------------------------
def classifier_run(root, seq_len):
    """A classify-species run's layout: OUT/model and OUT/checkpoints/step_*/ holding the
    training options (seq_len), with a random tiny classifier."""
    tok = CharTokenizer()
    model = core.SequenceClassifier(core.SequenceClassifierConfig(
        vocab_size=tok.vocab_size, d_model=8, n_layer=1, num_classes=2, d_state=4))
    for folder in (root / "model", root / "checkpoints" / "step_0000002"):
        model.save_pretrained(folder)
        tok.save(folder)
        (folder / "classes.json").write_text(json.dumps(["x", "y"]))
    step = root / "checkpoints" / "step_0000002"
    (step / "train_config.json").write_text(json.dumps({"seq_len": seq_len, "steps": 2}))
    (step / "trainer_state.pt").write_bytes(b"")
    return root / "model"


def spans_of(tsv):
    with open(tsv, newline="") as f:
        return [int(r["end"]) - int(r["start"]) for r in csv.DictReader(f, delimiter="\t")]


def test_predict_species_defaults_to_the_training_window(tmp_path, capsys):
    fasta = tmp_path / "new.fa"
    fasta.write_text(">r\n" + "ACGT" * 250 + "\n")                     # 1000 bases
    model = classifier_run(tmp_path / "run", seq_len=100)
    out = tmp_path / "p.tsv"
    assert cli.main(["predict-species", "--model", str(model), "--fasta", str(fasta),
                     "--out", str(out)]) == 0
    assert "windows of 100 bases" in capsys.readouterr().err
    assert spans_of(out) == [100] * 10
    step = tmp_path / "run" / "checkpoints" / "step_0000002"          # a checkpoint: its own
    assert cli.main(["predict-species", "--model", str(step), "--fasta", str(fasta),
                     "--out", str(out)]) == 0
    assert spans_of(out) == [100] * 10
    assert cli.main(["predict-species", "--model", str(model), "--fasta", str(fasta),
                     "--out", str(out), "--window", "250"]) == 0         # given: used
    assert spans_of(out) == [250] * 4


def test_predict_species_without_a_training_record_asks_for_window(tmp_path, capsys):
    fasta = tmp_path / "new.fa"
    fasta.write_text(">r\n" + "ACGT" * 50 + "\n")
    run = classifier_run(tmp_path / "run", seq_len=100)
    copied = tmp_path / "copied"
    copied.mkdir()
    for f in run.iterdir():
        (copied / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "p.tsv"
    one_line_error(capsys, ["predict-species", "--model", str(copied), "--fasta", str(fasta),
                            "--out", str(out)], str(copied), "pass window")
    assert not out.exists()
    other = classifier_run(tmp_path / "other", seq_len=64)
    one_line_error(capsys, ["predict-species", "--model", str(run), str(other), "--fasta",
                            str(fasta), "--out", str(out)],
                   "different window lengths", f"{run}: 100", f"{other}: 64")


def test_classifier_folder_files_that_disagree_are_refused(tmp_path):
    model = classifier_run(tmp_path / "run", seq_len=100)
    classes = model / "classes.json"
    for text, fragment in (('["x"]', "expected a list of 2 distinct class names"),
                           ('["x", "x"]', "expected a list of 2 distinct class names"),
                           ('["x", ', "not valid JSON")):
        classes.write_text(text)
        with pytest.raises(ValueError, match=fragment) as err:
            load_classifier(model)
        assert str(classes) in str(err.value)
