"""mamba_audio data side: quantisers, file I/O, folders and splits, demo audio, NLL metrics."""

import numpy as np
import pytest
import soundfile as sf
import torch

from mambaseq.mamba_audio.datasets import (AudioClips, find_audio_files, speakers_from_csv,
                                  speakers_from_regex, split_files)
from mambaseq.mamba_audio.io import AudioFileError, load_audio, save_audio
from mambaseq.mamba_audio.metrics import clip_stats, markov_bits_per_sample, nll_bits
from mambaseq.mamba_audio.quantize import Quantizer, linear_encode, mu_law_decode, mu_law_encode
from mambaseq.mamba_audio.synth import Voice, speech_like, write_demo_corpus


# ---------------------------------------------------------------- quantisers

@pytest.mark.parametrize("kind", ["mu_law", "linear"])
@pytest.mark.parametrize("bits", [8, 4, 10])
def test_round_trip_within_bound(kind, bits):
    qz = Quantizer(kind, bits)
    x = torch.cat([torch.linspace(-1, 1, 20001), torch.rand(5000) * 2 - 1,
                   torch.randn(5000) * 1e-3])
    q = qz.encode(x)
    assert q.dtype == torch.int64 and q.min() >= 0 and q.max() < qz.n_classes
    err = (qz.decode(q) - x).abs()
    bound = qz.error_bound(x)
    assert (err <= bound + 1e-6).all(), float((err - bound).max())
    # The bound is not vacuous: somewhere the error comes within 20% of it.
    assert (err > 0.8 * bound).any()


def test_mu_law_is_finer_near_zero_and_is_torchaudio():
    qz = Quantizer("mu_law", 8)
    assert qz.error_bound(torch.tensor(0.0)) < 0.1 * qz.error_bound(torch.tensor(1.0))
    x = torch.tensor([-1.0, 0.0, 1.0])
    assert mu_law_encode(x).tolist() == [0, 128, 255]
    assert torch.allclose(mu_law_decode(torch.tensor([0, 255])), torch.tensor([-1.0, 1.0]))
    assert qz.silence == 128


def test_encode_clamps_out_of_range():
    for qz in (Quantizer("mu_law"), Quantizer("linear")):
        q = qz.encode(torch.tensor([-3.0, 2.5]))
        assert q.tolist() == [0, qz.n_classes - 1]
    assert linear_encode(torch.tensor([0.0]), 8).item() in (127, 128)


def test_quantizer_rejects_bad_settings():
    with pytest.raises(ValueError, match="unknown quantiser kind"):
        Quantizer("a_law")
    with pytest.raises(ValueError, match="bits"):
        Quantizer("mu_law", 0)


# ---------------------------------------------------------------- file I/O

def _tone(n, rate, freq=440.0, amp=0.5):
    t = np.arange(n) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("subtype,tol", [("PCM_16", 1e-4), ("PCM_24", 1e-6), ("PCM_32", 1e-8),
                                         ("FLOAT", 0.0)])
def test_load_integer_and_float_wavs(tmp_path, subtype, tol):
    x = _tone(800, 8000)
    path = tmp_path / f"t_{subtype}.wav"
    sf.write(path, x, 8000, subtype=subtype)
    wav, rate = load_audio(path)
    assert rate == 8000 and wav.dtype == torch.float32 and wav.shape == (800,)
    assert np.abs(wav.numpy() - x).max() <= tol + 1e-9


def test_stereo_is_mixed_down(tmp_path):
    left, right = _tone(1000, 8000, 300.0), _tone(1000, 8000, 500.0, 0.25)
    path = tmp_path / "stereo.flac"
    sf.write(path, np.stack([left, right], 1), 8000, subtype="PCM_24")
    wav, _ = load_audio(path)
    assert np.abs(wav.numpy() - (left + right) / 2).max() < 1e-5


def test_other_rate_is_resampled(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, _tone(44100, 44100, 200.0), 44100, subtype="PCM_16")
    wav, rate = load_audio(path, sample_rate=8000)
    assert rate == 8000 and wav.shape == (8000,)
    # still a 200 Hz tone: its spectrum peaks at bin 200 of a 1-second FFT
    assert int(torch.fft.rfft(wav).abs().argmax()) == 200


def test_ogg_and_peak_normalise(tmp_path):
    path = tmp_path / "a.ogg"
    sf.write(path, _tone(8000, 8000, 300.0, 0.2), 8000, format="OGG", subtype="VORBIS")
    wav, _ = load_audio(path, normalize="peak")
    assert wav.abs().max() == pytest.approx(1.0)


def test_bad_files_name_the_file(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" * 4)
    no_frames = tmp_path / "noframes.wav"
    sf.write(no_frames, np.zeros(0, np.float32), 8000)
    nan = tmp_path / "nan.wav"
    x = _tone(100, 8000)
    x[37] = np.nan
    sf.write(nan, x, 8000, subtype="FLOAT")
    mp3 = tmp_path / "song.mp3"
    mp3.write_bytes(b"ID3")
    cases = [(empty, "empty"), (corrupt, "cannot decode"), (no_frames, "no samples"),
             (nan, "frame 37"), (mp3, "unsupported audio format"),
             (tmp_path / "missing.wav", "no such file")]
    truncated = tmp_path / "truncated.wav"        # a cut-off copy: the header promises more
    sf.write(truncated, _tone(1000, 8000), 8000, subtype="PCM_16")
    truncated.write_bytes(truncated.read_bytes()[:1044])
    cases += [(truncated, "truncated: the header promises 2000 bytes of samples, the file "
                          "holds 1000")]
    for path, reason in cases:
        with pytest.raises(AudioFileError, match=reason) as info:
            load_audio(path)
        assert str(path) in str(info.value)


def test_save_audio_round_trip_and_refuses_nan(tmp_path):
    x = torch.from_numpy(_tone(500, 16000))
    save_audio(tmp_path / "sub" / "x.wav", x, 16000)
    info = sf.info(tmp_path / "sub" / "x.wav")
    assert info.samplerate == 16000 and info.subtype == "PCM_16" and info.frames == 500
    assert (load_audio(tmp_path / "sub" / "x.wav")[0] - x).abs().max() < 1e-4
    with pytest.raises(ValueError, match="NaN"):
        save_audio(tmp_path / "y.wav", torch.tensor([0.0, float("nan")]), 8000)
    assert not (tmp_path / "y.wav").exists()


# ---------------------------------------------------------------- folders and splits

@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    write_demo_corpus(root / "nested", n_speakers=4, clips_per_speaker=5, seconds=0.25)
    return root


def test_find_audio_files_is_recursive(demo_dir, tmp_path):
    files = find_audio_files(demo_dir)
    assert len(files) == 20 and all(f.parent.name == "nested" for f in files)
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        find_audio_files(tmp_path)


def test_speaker_split_is_disjoint(demo_dir):
    files = find_audio_files(demo_dir)
    speakers = speakers_from_regex(files)
    assert sorted(set(speakers.values())) == ["spk0", "spk1", "spk2", "spk3"]
    for seed in range(5):
        train, test = split_files(files, by="speaker", speakers=speakers, test_fraction=0.25,
                                  seed=seed)
        train_spk = {speakers[f] for f in train}
        test_spk = {speakers[f] for f in test}
        assert len(test_spk) == 1 and not train_spk & test_spk
        assert sorted(train + test) == files
    train, test = split_files(files, by="speaker", speakers=speakers, test_speakers=["spk2"])
    assert {speakers[f] for f in test} == {"spk2"} and len(test) == 5


def test_file_split_and_errors(demo_dir):
    files = find_audio_files(demo_dir)
    train, test = split_files(files, by="file", test_fraction=0.2, seed=1)
    assert len(test) == 4 and not set(train) & set(test)
    assert split_files(files, by="file", seed=1) == (train, test)
    with pytest.raises(ValueError, match="needs a speaker"):
        split_files(files, by="speaker")
    with pytest.raises(ValueError, match="not found"):
        split_files(files, by="speaker", speakers=speakers_from_regex(files),
                    test_speakers=["nobody"])
    with pytest.raises(ValueError, match="does not match") as info:
        speakers_from_regex(files, r"^(\w+)-\d+\.wav$")
    assert str(files[0]) in str(info.value)
    for pattern, reason in (("(unclosed", "not a valid regular expression"),
                            (r"\w+", "has no group")):
        with pytest.raises(ValueError, match=reason):
            speakers_from_regex(files, pattern)


def test_speakers_from_csv(demo_dir, tmp_path):
    files = find_audio_files(demo_dir)
    csv_path = tmp_path / "speakers.csv"
    rows = [f"{f.relative_to(demo_dir).as_posix()},{'odd' if i % 2 else 'even'}"
            for i, f in enumerate(files[:-1])]
    csv_path.write_text("file,speaker\n" + "\n".join(rows) + "\n")
    with pytest.raises(ValueError, match="not listed") as info:
        speakers_from_csv(csv_path, files, root=demo_dir)
    assert files[-1].name in str(info.value)
    speakers = speakers_from_csv(csv_path, files[:-1], root=demo_dir)
    train, test = split_files(files[:-1], by="speaker", speakers=speakers, test_speakers=["odd"])
    assert {speakers[f] for f in train} == {"even"}


def test_crops_are_deterministic_and_masked(demo_dir):
    clips = AudioClips.from_files(find_audio_files(demo_dir), sample_rate=8000, progress=False)
    assert len(clips) == 20 and clips.n_samples == 20 * 2000
    a = clips.crops(step=3, seq_len=255, batch_size=4, rank=1, world_size=2)
    b = clips.crops(step=3, seq_len=255, batch_size=4, rank=1, world_size=2)
    c = clips.crops(step=3, seq_len=255, batch_size=4, rank=0, world_size=2)
    assert a["tokens"].shape == (4, 256) and a["mask"].all()
    assert torch.equal(a["tokens"], b["tokens"]) and not torch.equal(a["tokens"], c["tokens"])
    # every crop is a contiguous piece of some clip
    for row in a["tokens"]:
        assert any(_contains(clip, row) for clip in clips.clips)
    long = clips.crops(step=0, seq_len=3999, batch_size=2)
    assert long["tokens"].shape == (2, 4000)
    assert long["mask"].sum(1).tolist() == [2000, 2000]
    assert (long["tokens"][~long["mask"]] == clips.quantizer.silence).all()


def _contains(clip, row):
    clip = clip.long()
    return any(torch.equal(clip[s:s + len(row)], row) for s in range(len(clip) - len(row) + 1))


def test_padded_whole_clips(tmp_path):
    for i, n in enumerate([300, 500]):
        sf.write(tmp_path / f"{i}.wav", _tone(n, 8000), 8000)
    clips = AudioClips.from_files(find_audio_files(tmp_path), 8000, progress=False)
    batch = clips.padded([1, 0])
    assert batch["tokens"].shape == (2, 500)
    assert batch["mask"].sum(1).tolist() == [500, 300]
    assert torch.equal(batch["tokens"][1, :300], clips[0])


# ---------------------------------------------------------------- demo audio

def test_speech_like_signal():
    wav = speech_like(1.0, 8000, Voice(pitch_hz=150.0), seed=4)
    assert wav.shape == (8000,) and torch.isfinite(wav).all()
    assert wav.abs().max() == pytest.approx(0.9)
    assert torch.equal(wav, speech_like(1.0, 8000, Voice(pitch_hz=150.0), seed=4))
    assert not torch.equal(wav, speech_like(1.0, 8000, Voice(pitch_hz=150.0), seed=5))
    # has silences (20 ms frames with near-zero energy) and voiced parts
    frames = wav[: 8000 // 160 * 160].view(-1, 160).pow(2).mean(1).sqrt()
    assert (frames < 1e-3).sum() >= 3 and (frames > 0.05).sum() >= 10
    # voiced: the spectrum's strongest component sits in a plausible pitch/formant range
    peak_hz = int(torch.fft.rfft(wav).abs().argmax())
    assert 80 < peak_hz < 3600


# ---------------------------------------------------------------- metrics

def test_nll_bits_uniform_and_mask():
    logits = torch.zeros(2, 5, 256)
    targets = torch.randint(0, 256, (2, 5))
    bits, n = nll_bits(logits, targets)
    assert n == 10 and bits / n == pytest.approx(8.0)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, :3] = True
    logits[0, 0, targets[0, 0]] = 100.0
    bits, n = nll_bits(logits, targets, mask)
    assert n == 3 and bits == pytest.approx(16.0, abs=1e-3)


def test_markov_baseline_learns_a_chain():
    gen = torch.Generator().manual_seed(0)
    # a deterministic cycle through 4 of 256 classes: order 1 knows the next class
    cycle = torch.tensor([3, 80, 200, 17])
    clips = [cycle.repeat(200)[int(torch.randint(4, (), generator=gen)):] for _ in range(4)]
    assert markov_bits_per_sample(clips[:2], clips[2:], order=0, alpha=0.01) == pytest.approx(2.0, abs=0.01)
    assert markov_bits_per_sample(clips[:2], clips[2:], order=1, alpha=0.01) < 0.02
    unseen = [torch.full((50,), 99)]
    assert markov_bits_per_sample(clips, unseen, order=1) == pytest.approx(8.0, abs=0.01)
    with pytest.raises(ValueError, match="order"):
        markov_bits_per_sample(clips, clips, order=3)


def test_clip_stats_tell_noise_tone_silence_and_clipping_apart():
    g = torch.Generator().manual_seed(0)
    noise = clip_stats(0.3 * torch.randn(8000, generator=g))
    tone = clip_stats(0.5 * torch.sin(torch.arange(8000) * 2 * torch.pi * 440 / 8000))
    assert noise["spectral_flatness"] > 0.4 and tone["spectral_flatness"] < 0.05
    assert abs(tone["rms_db"] - 20 * np.log10(0.5 / np.sqrt(2))) < 0.05
    assert noise["silent_fraction"] == tone["silent_fraction"] == 0.0
    assert noise["clipped_fraction"] == tone["clipped_fraction"] == 0.0

    half_silent = torch.cat([torch.zeros(4000), 0.3 * torch.randn(4000, generator=g)])
    assert 0.4 < clip_stats(half_silent)["silent_fraction"] < 0.6
    assert clip_stats(torch.zeros(8000))["spectral_flatness"] == 0.0   # no loud frame

    clipped = (3 * torch.randn(8000, generator=g)).clamp(-1, 1)
    assert clip_stats(clipped)["clipped_fraction"] > 0.3
    peak_normalised = torch.sin(torch.arange(8000) * 0.3)
    peak_normalised[100] = 1.0                   # touches full scale once: not clipping
    assert clip_stats(peak_normalised)["clipped_fraction"] == 0.0

    speech = speech_like(1.0, 8000, Voice(pitch_hz=120.0), seed=0)
    assert clip_stats(speech)["spectral_flatness"] < noise["spectral_flatness"] / 3
    assert clip_stats(torch.randn(100, generator=g))["peak"] > 0     # a short clip works

    with pytest.raises(ValueError, match="at least 16 samples"):
        clip_stats(torch.zeros(8))
    with pytest.raises(ValueError, match="NaN or infinite"):
        clip_stats(torch.tensor([0.0] * 20 + [float("nan")]))
