"""train-audio -> eval-audio -> generate-audio through the command line, on demo audio and
(slow) on the real FSDD recordings; scoring memory bounded by the chunk, not the clip."""
import json
import subprocess
import sys

import pytest
import soundfile as sf
import torch

from mambaseq.mamba_audio.io import save_audio
from mambaseq.mamba_audio.model import AudioLM, stream_nll_bits
from mambaseq.mamba_audio.synth import Voice, speech_like, write_demo_corpus
from mambaseq.pipelines import cli


pytestmark = pytest.mark.usefixtures("one_thread_module")


def _last_json(text):
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


TINY_TRAIN = ["--preset", "tiny", "--seq-len", "64", "--batch-size", "2", "--eval-every", "2",
              "--val-batches", "1", "--log-every", "1", "--device", "cpu"]


def test_jobs_end_to_end_on_demo_audio(tmp_path, capsys):
    data = tmp_path / "data"
    write_demo_corpus(data, n_speakers=3, clips_per_speaker=3, seconds=0.25, sample_rate=8000)
    run = tmp_path / "run"
    assert cli.main(["train-audio", "--data", str(data), "--out", str(run), "--steps", "2",
                     "--test-speakers", "spk1", *TINY_TRAIN]) == 0
    split = json.loads((run / "split.json").read_text())
    assert len(split["test"]) == 3 and all("_spk1_" in f for f in split["test"])
    assert not any("_spk1_" in f for f in split["train"])
    capsys.readouterr()

    assert cli.main(["eval-audio", "--model", str(run / "model"), "--data", str(data),
                     "--subset", "test", "--test-speakers", "spk1", "--markov-baseline"]) == 0
    result = _last_json(capsys.readouterr().out)
    assert {"bits_per_sample", "samples"} <= set(result)
    assert result["samples"] == 3 * (2000 - 1) and result["files"] == 3
    assert 0 < result["bits_per_sample"] < 9
    markov = result["markov_bits_per_sample"]
    assert set(markov) == {"order_0", "order_1", "order_2"}
    assert markov["order_1"] < markov["order_0"] < 8.0      # the synthetic speech is predictable
    assert cli.main(["eval-audio", "--model", str(run / "model"), "--data", str(data),
                     "--markov-baseline"]) == 1
    assert "--markov-baseline needs --subset test" in capsys.readouterr().err

    gen = tmp_path / "gen"
    prime = data / "0_spk0_0.wav"
    assert cli.main(["generate-audio", "--model", str(run / "model"), "--out", str(gen),
                     "--n", "2", "--seconds", "0.01", "--prime", str(prime),
                     "--prime-seconds", "0.005", "--seed", "3", "--compare", str(prime)]) == 0
    report = _last_json(capsys.readouterr().out)
    assert report["samples_per_second"] > 0 and report["primed_samples"] == 40
    assert report["batch"] == 2 and report["samples_per_second_with_priming"] > 0
    for path in report["files"]:
        info = sf.info(path)
        assert info.samplerate == 8000 and info.frames == 40 + 80
    assert (gen / "spectrograms.png").stat().st_size > 0
    stats = {"rms_db", "peak", "clipped_fraction", "silent_fraction", "spectral_flatness"}
    assert set(report["generated"]) == set(report["real"]) == stats
    assert report["real"]["peak"] == 1.0          # the --compare clip, peak-normalised
    first = sf.read(report["files"][0])[0]
    assert cli.main(["generate-audio", "--model", str(run / "model"), "--out", str(gen),
                     "--n", "2", "--seconds", "0.01", "--prime", str(prime),
                     "--prime-seconds", "0.005", "--seed", "3"]) == 0
    assert (sf.read(report["files"][0])[0] == first).all()


def test_train_audio_rejects_bad_seq_len(tmp_path, capsys):
    data = tmp_path / "data"
    write_demo_corpus(data, n_speakers=2, clips_per_speaker=2, seconds=0.1)
    code = cli.main(["train-audio", "--data", str(data), "--out", str(tmp_path / "r"),
                     "--steps", "1", *TINY_TRAIN[:2], "--seq-len", "100", "--device", "cpu"])
    assert code != 0 and "multiple of 16" in capsys.readouterr().err


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
def test_fsdd_train_and_eval_on_unseen_speaker(shared_data, tmp_path, capsys):
    fsdd = shared_data / "speech" / "fsdd"
    run = tmp_path / "run"
    assert cli.main(["train-audio", "--data", str(fsdd), "--out", str(run), "--steps", "60",
                     "--test-speakers", "theo", "--preset", "tiny", "--seq-len", "512",
                     "--batch-size", "4", "--lr", "5e-3", "--warmup-steps", "5",
                     "--eval-every", "60", "--val-batches", "2", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert cli.main(["eval-audio", "--model", str(run / "model"), "--data", str(fsdd),
                     "--subset", "test", "--test-speakers", "theo", "--max-files", "40"]) == 0
    result = _last_json(capsys.readouterr().out)
    assert result["files"] == 40 and result["bits_per_sample"] < 8.0
