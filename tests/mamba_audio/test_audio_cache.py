"""AudioClips decodes, resamples and quantises each file once into the clip cache; later
loads read the cache, a changed file or setting is decoded again, and crops are unchanged."""
import os

import pytest
import soundfile
import torch

from mambaseq.mamba_audio import datasets
from mambaseq.mamba_audio.datasets import AudioClips
from mambaseq.mamba_audio.io import load_audio
from mambaseq.mamba_audio.quantize import Quantizer
from mambaseq.mamba_audio.synth import write_demo_corpus


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMBASEQ_CACHE_DIR", str(tmp_path / "cache"))
    return sorted(write_demo_corpus(tmp_path / "wavs", n_speakers=2, clips_per_speaker=3,
                                    seconds=0.2, sample_rate=16000))


def _direct(files, rate, quantizer=Quantizer()):
    return [quantizer.encode(load_audio(f, sample_rate=rate, normalize="peak")[0])
            .to(torch.int32) for f in files]


def _no_decoding(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("decoded again")
    monkeypatch.setattr(datasets, "load_audio", refuse)


def test_clips_are_decoded_once_then_read_from_the_cache(corpus, tmp_path, monkeypatch):
    first = AudioClips.from_files(corpus, sample_rate=8000, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(first.clips, _direct(corpus, 8000)))
    assert len(list((tmp_path / "cache" / "audio").glob("*.tokens"))) == 1
    with monkeypatch.context() as m:
        _no_decoding(m)
        again = AudioClips.from_files(corpus, sample_rate=8000, progress=False)
    assert [c.dtype for c in again.clips] == [torch.int32] * len(corpus)
    assert all(torch.equal(a, b) for a, b in zip(first.clips, again.clips))
    for step in range(3):                              # the same seeded crops
        a, b = first.crops(step, 256, 4, seed=7), again.crops(step, 256, 4, seed=7)
        assert torch.equal(a["tokens"], b["tokens"]) and torch.equal(a["mask"], b["mask"])


def test_a_changed_file_or_setting_is_decoded_again(corpus, monkeypatch):
    before = AudioClips.from_files(corpus, sample_rate=8000, progress=False)
    other_rate = AudioClips.from_files(corpus, sample_rate=4000, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(other_rate.clips, _direct(corpus, 4000)))
    linear = Quantizer("linear", bits=10)
    ten_bits = AudioClips.from_files(corpus, sample_rate=8000, quantizer=linear,
                                     progress=False)
    assert all(torch.equal(a, b) for a, b in zip(ten_bits.clips, _direct(corpus, 8000, linear)))
    assert max(int(c.max()) for c in ten_bits.clips) > 255         # stored as uint16
    wav, rate = soundfile.read(corpus[0], dtype="float32")
    st = os.stat(corpus[0])
    soundfile.write(corpus[0], -wav, rate)                        # same size, same mtime
    os.utime(corpus[0], ns=(st.st_atime_ns, st.st_mtime_ns))
    changed = AudioClips.from_files(corpus, sample_rate=8000, progress=False)
    assert torch.equal(changed.clips[0], _direct(corpus[:1], 8000)[0])
    assert not torch.equal(changed.clips[0], before.clips[0])
    with monkeypatch.context() as m:
        _no_decoding(m)
        with pytest.raises(AssertionError, match="decoded again"):
            AudioClips.from_files(corpus[::-1], sample_rate=8000, progress=False)  # new order


def test_an_unwritable_cache_folder_is_named(corpus, tmp_path, monkeypatch):
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    blocked.chmod(0o500)
    if os.access(blocked, os.W_OK):
        pytest.skip("running as a user who can write anywhere (root)")
    with pytest.raises(PermissionError, match=r"cannot write to the cache folder .*blocked.*"
                                              r"MAMBASEQ_CACHE_DIR"):
        AudioClips.from_files(corpus, sample_rate=8000, progress=False, cache_dir=blocked)
