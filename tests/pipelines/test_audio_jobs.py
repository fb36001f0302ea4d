"""train_audio -> evaluate_audio -> generate_audio as functions, on demo audio and (slow) on
the real FSDD recordings; one command-line smoke test per command; scoring memory bounded
by the chunk, not the clip; the held-out side is the run's own; stale clips are removed."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch

from mambaseq.mamba_audio.io import save_audio
from mambaseq.mamba_audio.model import AudioLM, stream_nll_bits
from mambaseq.mamba_audio.synth import Voice, speech_like, write_demo_corpus
from mambaseq.mamba_audio.training import FolderSplit, run_split_file
from mambaseq.pipelines import cli
from mambaseq.pipelines.audio import (EvalAudioConfig, GenerateAudioConfig, TrainAudioConfig,
                                      evaluate_audio, generate_audio, train_audio)
from mambaseq.pipelines.training import ConfigError, OutRefused

pytestmark = pytest.mark.usefixtures("one_thread_module")


def _last_json(text):
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


TINY = dict(preset="tiny", seq_len=64, batch_size=2, eval_every=2, val_batches=1, log_every=1,
            device="cpu")
TINY_ARGS = ["--preset", "tiny", "--seq-len", "64", "--batch-size", "2", "--eval-every", "2",
             "--val-batches", "1", "--log-every", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def demo_run(one_thread_module, tmp_path_factory):
    """A 2-step train_audio run on 3 demo speakers, spk1 held out: (data, result)."""
    root = tmp_path_factory.mktemp("audio")
    data = root / "data"
    write_demo_corpus(data, n_speakers=3, clips_per_speaker=3, seconds=0.25, sample_rate=8000)
    result = train_audio(TrainAudioConfig(data=str(data), out=str(root / "run"), steps=2,
                                          test_speakers="spk1", **TINY))
    return data, result


@pytest.fixture(scope="module")
def untrained(one_thread_module, tmp_path_factory):
    """An untrained tiny model folder at 8 kHz (enough to generate from)."""
    folder = tmp_path_factory.mktemp("untrained") / "model"
    torch.manual_seed(0)
    AudioLM.from_preset("tiny", sample_rate=8000).save_pretrained(folder)
    return folder


def test_jobs_end_to_end_on_demo_audio(demo_run, tmp_path):
    data, run = demo_run
    assert run.step == 2 and run.model_dir == run.out / "model" and run.sample_rate == 8000
    assert run.best_val_loss is not None and set(run.val) >= {"val_loss", "val_bits_per_sample"}
    split = json.loads(run.split_file.read_text())
    assert len(split["test"]) == 3 and all("_spk1_" in f for f in split["test"])
    assert not any("_spk1_" in f for f in split["train"])

    result = evaluate_audio(EvalAudioConfig(model=str(run.model_dir), data=str(data),
                                            subset="test", test_speakers="spk1",
                                            markov_baseline=True))
    assert [str(f) for f in result.files] == split["test"]
    assert result.split_file == run.split_file.resolve()
    assert result.samples == 3 * (2000 - 1) and result.summary()["files"] == 3
    assert 0 < result.bits_per_sample < 9
    markov = result.markov_bits_per_sample
    assert set(markov) == {"order_0", "order_1", "order_2"}
    assert markov["order_1"] < markov["order_0"] < 8.0      # the synthetic speech is predictable
    with pytest.raises(ConfigError, match="markov_baseline needs subset test"):
        EvalAudioConfig(model=str(run.model_dir), data=str(data), markov_baseline=True)

    gen = tmp_path / "gen"
    prime = data / "0_spk0_0.wav"
    config = GenerateAudioConfig(model=str(run.model_dir), out=str(gen), n=2, seconds=0.01,
                                 prime=str(prime), prime_seconds=0.005, seed=3,
                                 compare=(str(prime),))
    report = generate_audio(config)
    assert report.samples_per_second > 0 and report.primed_samples == 40
    assert len(report.files) == 2 and report.samples_per_second_with_priming > 0
    assert report.tokens.shape == (2, 40 + 80) and report.removed == []
    for path in report.files:
        info = sf.info(path)
        assert info.samplerate == 8000 and info.frames == 40 + 80
    assert report.spectrograms == gen / "spectrograms.png"
    assert report.spectrograms.stat().st_size > 0
    stats = {"rms_db", "peak", "clipped_fraction", "silent_fraction", "spectral_flatness"}
    assert set(report.generated) == set(report.real) == stats
    assert report.real["peak"] == 1.0          # the compare clip, peak-normalised
    first = sf.read(report.files[0])[0]
    again = generate_audio(GenerateAudioConfig(**{**config.to_dict(), "compare": ()}))
    assert again.files == report.files and (sf.read(again.files[0])[0] == first).all()


def test_the_held_out_side_is_the_runs_own_split_json(tmp_path):
    """Speakers added to the folder after training never count as held out: the test side
    of eval-audio is the one in the run's split.json, and a file of it that is gone is
    refused by name."""
    data, out = tmp_path / "data", tmp_path / "run"
    write_demo_corpus(data, n_speakers=3, clips_per_speaker=2, seconds=0.1, sample_rate=8000)
    run = train_audio(TrainAudioConfig(data=str(data), out=str(out), steps=1, **TINY))
    split = json.loads(run.split_file.read_text())
    write_demo_corpus(data, n_speakers=5, clips_per_speaker=2, seconds=0.1, sample_rate=8000)
    derived = FolderSplit(data).train_test()         # what the options give now: not the run's
    assert [str(f) for f in derived[1]] != split["test"]

    config = EvalAudioConfig(model=str(run.model_dir), data=str(data), subset="test",
                             markov_baseline=True)
    result = evaluate_audio(config)
    assert [str(f) for f in result.files] == split["test"]
    assert result.split_file == run.split_file.resolve()
    assert result.samples == len(split["test"]) * (800 - 1)
    everything = evaluate_audio(EvalAudioConfig(model=str(run.model_dir), data=str(data)))
    assert len(everything.files) == 10 and everything.split_file is None

    # a checkpoint of the run finds the same split.json; a model folder without one derives
    checkpoint = next((out / "checkpoints").glob("step_*"))
    assert run_split_file(checkpoint) == run_split_file(run.model_dir) == run.split_file.resolve()
    assert run_split_file(tmp_path / "elsewhere" / "model") is None

    gone = Path(split["test"][0])
    gone.unlink()
    with pytest.raises(ValueError) as err:
        evaluate_audio(config)
    assert (f"{gone} (1 file(s) in all) of the run's split {run.split_file.resolve()} is gone"
            in str(err.value))


def test_generate_audio_removes_only_its_own_stale_clips(untrained, tmp_path):
    gen = tmp_path / "gen"
    config = dict(model=str(untrained), out=str(gen), seconds=0.01, device="cpu")
    first = generate_audio(GenerateAudioConfig(n=3, **config))
    assert [p.name for p in first.files] == ["sample_000.wav", "sample_001.wav",
                                             "sample_002.wav"]
    # what the user put in the folder since, named like a clip or not
    (gen / "sample_7.wav").write_bytes(b"mine")
    (gen / "my_sample_001.wav").write_bytes(b"mine")
    (gen / "elsewhere.wav").write_bytes(b"mine")
    os.symlink(gen / "elsewhere.wav", gen / "sample_004.wav")
    (gen / "sample_005.wav").mkdir()

    second = generate_audio(GenerateAudioConfig(n=1, **config))
    assert [p.name for p in second.files] == ["sample_000.wav"]
    assert second.removed == [gen / "sample_001.wav", gen / "sample_002.wav"]
    assert sorted(p.name for p in gen.iterdir()) == sorted([
        ".mambaseq-out.json", "config.json", "spectrograms.png", "sample_000.wav",
        "sample_7.wav", "my_sample_001.wav", "elsewhere.wav", "sample_004.wav",
        "sample_005.wav"])
    assert (gen / "sample_7.wav").read_bytes() == b"mine"

    # a folder mambaseq did not make is refused before anything is written or removed
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "sample_003.wav").write_bytes(b"mine")
    with pytest.raises(OutRefused, match="already holds files mambaseq did not write"):
        generate_audio(GenerateAudioConfig(n=1, **{**config, "out": str(foreign)}))
    assert sorted(p.name for p in foreign.iterdir()) == ["sample_003.wav"]


# -- the command line: one smoke test per command -----------------------------------------

def test_train_audio_command(tmp_path, capsys):
    data, run = tmp_path / "data", tmp_path / "run"
    write_demo_corpus(data, n_speakers=2, clips_per_speaker=2, seconds=0.1, sample_rate=8000)
    assert cli.main(["train-audio", "--data", str(data), "--out", str(run), "--steps", "1",
                     "--test-speakers", "spk1", *TINY_ARGS]) == 0
    printed = capsys.readouterr()            # progress lines on stderr, the result on stdout
    assert "train-audio: 2 train files" in printed.err
    summary = _last_json(printed.out)
    assert summary["step"] == 1 and summary["model_dir"] == str(run / "model")
    assert set(summary) == {"step", "loss", "best_val_loss", "model_dir"}
    assert json.loads((run / "config.json").read_text())["command"] == "train-audio"


def test_train_audio_rejects_bad_seq_len(tmp_path, capsys):
    data = tmp_path / "data"
    write_demo_corpus(data, n_speakers=2, clips_per_speaker=2, seconds=0.1)
    code = cli.main(["train-audio", "--data", str(data), "--out", str(tmp_path / "r"),
                     "--steps", "1", *TINY_ARGS[:2], "--seq-len", "100", "--device", "cpu"])
    assert code != 0 and "seq_len 100 must be a multiple of 16" in capsys.readouterr().err


def test_eval_audio_command(demo_run, capsys):
    data, run = demo_run
    assert cli.main(["eval-audio", "--model", str(run.model_dir), "--data", str(data),
                     "--subset", "test", "--markov-baseline"]) == 0
    captured = capsys.readouterr()
    result = _last_json(captured.out)
    assert result["files"] == 3 and result["samples"] == 3 * (2000 - 1)
    assert set(result) == {"bits_per_sample", "samples", "files", "seconds",
                           "markov_bits_per_sample"}
    assert f"the test side is the run's own, {run.split_file.resolve()}" in captured.err
    assert cli.main(["eval-audio", "--model", str(run.model_dir), "--data", str(data),
                     "--markov-baseline"]) == 2
    assert "argument --markov-baseline: needs subset test" in capsys.readouterr().err


def test_generate_audio_command(untrained, tmp_path, capsys):
    gen = tmp_path / "gen"
    assert cli.main(["generate-audio", "--model", str(untrained), "--out", str(gen),
                     "--n-clips", "2", "--seconds", "0.01", "--device", "cpu"]) == 0
    report = _last_json(capsys.readouterr().out)
    assert report["files"] == [str(gen / "sample_000.wav"), str(gen / "sample_001.wav")]
    assert report["batch"] == 2 and report["samples"] == 80 and report["primed_samples"] == 0
    assert report["sample_rate"] == 8000 and report["samples_per_second"] > 0
    assert "real" not in report and "scores" not in report
    assert (gen / "spectrograms.png").is_file()


def test_streamed_scoring_never_holds_more_than_a_chunk():
    torch.manual_seed(0)
    model = AudioLM.from_preset("tiny").eval()
    seen = []
    for stage in [*model.backbone.down_stages, model.backbone.center, *model.backbone.up_stages]:
        stage.register_forward_pre_hook(lambda mod, args, kw: seen.append(args[0].shape[1]),
                                        with_kwargs=True)
    tokens = torch.randint(0, 256, (1, 2 ** 13 + 5))
    bits, n = stream_nll_bits(model, tokens, chunk_size=1024)
    assert n == 2 ** 13 + 4 and max(seen) == 1024
    seen.clear()
    whole_bits, _ = stream_nll_bits(model, tokens, chunk_size=2 ** 14)
    assert max(seen) > 2 ** 13 and whole_bits == pytest.approx(bits, rel=1e-5)


@pytest.mark.slow
def test_eval_audio_of_a_million_samples_in_bounded_memory(tmp_path):
    """eval-audio on one 2**20-sample recording: peak RSS stays far below what the whole
    (1, 2**20, 256) logits alone (1 GiB) would need."""
    model_dir = tmp_path / "model"
    torch.manual_seed(0)
    AudioLM.from_preset("tiny", sample_rate=16000).save_pretrained(model_dir)
    wav = speech_like(2 ** 20 / 16000, 16000, Voice(180.0), seed=1)
    save_audio(tmp_path / "data" / "0_long_0.wav", wav, 16000)
    # VmHWM, the child's own peak (ru_maxrss would carry the parent's across exec)
    code = ("import sys; from mambaseq.pipelines import cli; "
            "from mambaseq.bench.report import peak_rss_gb; "
            "rc = cli.main(sys.argv[1:]); "
            "print('maxrss_kb', peak_rss_gb() * 2 ** 20); "
            "sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, "eval-audio", "--model", str(model_dir),
                           "--data", str(tmp_path / "data"), "--threads", "1"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = _last_json(proc.stdout)
    assert result["samples"] == 2 ** 20 - 1
    maxrss_mb = float(proc.stdout.split("maxrss_kb")[1].split()[0]) / 1024
    print(f"eval-audio 2**20 samples: {result}, peak RSS {maxrss_mb:.0f} MB")
    assert maxrss_mb < 900


@pytest.mark.slow
def test_fsdd_train_and_eval_on_unseen_speaker(shared_data, tmp_path):
    fsdd = shared_data / "speech" / "fsdd"
    run = train_audio(TrainAudioConfig(
        data=str(fsdd), out=str(tmp_path / "run"), steps=60, test_speakers="theo",
        preset="tiny", seq_len=512, batch_size=4, lr=5e-3, warmup_steps=5, eval_every=60,
        val_batches=2, device="cpu"))
    result = evaluate_audio(EvalAudioConfig(model=str(run.model_dir), data=str(fsdd),
                                            subset="test", test_speakers="theo", max_files=40))
    assert len(result.files) == 40 and result.bits_per_sample < 8.0
    assert all("_theo_" in f.name for f in result.files)
