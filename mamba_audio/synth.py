"""Speech-like demo audio, so that the quick-start and the tests need no recordings.

A source-filter voice (Fant's model in its simplest form): a glottal pulse train whose
pitch drifts and wobbles, shaped by a spectral tilt, sent through a cascade of formant
resonators (Klatt, 1980) whose targets change from syllable to syllable, with noise
bursts before some syllables for consonants and silences in between. Each demo speaker
has its own pitch and vocal-tract length (formant scale), so speaker splits mean
something on demo data too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torchaudio.functional as AF

from .io import save_audio

# First three formants (Hz) of five vowels of an adult male voice (Peterson & Barney, 1952).
VOWEL_FORMANTS = {
    "a": (730.0, 1090.0, 2440.0), "e": (530.0, 1840.0, 2480.0), "i": (270.0, 2290.0, 3010.0),
    "o": (570.0, 840.0, 2410.0), "u": (300.0, 870.0, 2240.0),
}
FORMANT_BANDWIDTHS = (80.0, 100.0, 150.0)


@dataclass(frozen=True)
class Voice:
    """A demo speaker: mean pitch (Hz) and a formant scale (shorter tract -> higher)."""
    pitch_hz: float = 130.0
    formant_scale: float = 1.0


def _resonator(x: torch.Tensor, freq: float, bandwidth: float, sample_rate: int
               ) -> torch.Tensor:
    """Two-pole resonator with unit gain at 0 Hz (Klatt's formant filter); x (L,)."""
    r = math.exp(-math.pi * bandwidth / sample_rate)
    theta = 2 * math.pi * freq / sample_rate
    a = torch.tensor([1.0, -2 * r * math.cos(theta), r * r], dtype=torch.float64)
    b = torch.tensor([float(a.sum()), 0.0, 0.0], dtype=torch.float64)
    return AF.lfilter(x, a, b, clamp=False)


def _envelope(n: int, sample_rate: int, ramp_s: float = 0.02) -> torch.Tensor:
    """(n,) raised-cosine attack and release of ``ramp_s`` seconds, flat between."""
    ramp = min(int(ramp_s * sample_rate), n // 2)
    env = torch.ones(n, dtype=torch.float64)
    if ramp > 0:
        rise = 0.5 - 0.5 * torch.cos(torch.linspace(0, math.pi, ramp, dtype=torch.float64))
        env[:ramp], env[n - ramp:] = rise, rise.flip(0)
    return env


def _at_rms(x: torch.Tensor, rms: float) -> torch.Tensor:
    """x (L,) scaled to root-mean-square ``rms`` (a silent x is returned as it is)."""
    return x * (rms / x.pow(2).mean().sqrt().clamp(min=1e-12))


def speech_like(seconds: float = 1.0, sample_rate: int = 8000, voice: Voice = Voice(),
                seed: int = 0) -> torch.Tensor:
    """A speech-like waveform: voiced syllables with varying pitch and vowels, some noise
    consonants, and silences.

    Args:
        seconds (float, 1.0): duration.
        sample_rate (int, 8000): rate in Hz.
        voice (Voice): pitch and formant scale of the speaker.
        seed (int, 0): the same seed gives the same waveform.

    Returns:
        (L,) float32 with L = round(seconds * sample_rate), peak 0.9.

    >>> wav = speech_like(0.5, 8000, Voice(pitch_hz=200.0), seed=1)    # (4000,)
    """
    gen = torch.Generator().manual_seed(seed)

    def uniform(lo, hi):
        return lo + (hi - lo) * float(torch.rand((), generator=gen, dtype=torch.float64))

    n = int(round(seconds * sample_rate))
    t = torch.arange(n, dtype=torch.float64) / sample_rate
    # Pitch: slow intonation drift plus a faster wobble around the voice's mean.
    f0 = voice.pitch_hz * torch.exp(
        0.18 * torch.sin(2 * math.pi * uniform(0.4, 1.2) * t + uniform(0, 2 * math.pi))
        + 0.03 * torch.sin(2 * math.pi * uniform(4.0, 6.0) * t + uniform(0, 2 * math.pi)))
    phase = torch.cumsum(f0 / sample_rate, 0)
    pulses = torch.diff(torch.floor(phase), prepend=torch.zeros(1, dtype=torch.float64))
    # Glottal pulse: two one-pole low-passes (-12 dB/octave tilt), then a first difference
    # for the radiation at the lips (+6 dB/octave).
    pole = math.exp(-2 * math.pi * 300.0 / sample_rate)
    tilt_a = torch.tensor([1.0, -pole], dtype=torch.float64)
    tilt_b = torch.tensor([1.0 - pole, 0.0], dtype=torch.float64)
    source = AF.lfilter(AF.lfilter(pulses, tilt_a, tilt_b, clamp=False), tilt_a, tilt_b,
                        clamp=False)
    source = torch.diff(source, prepend=torch.zeros(1, dtype=torch.float64))

    out = torch.zeros(n, dtype=torch.float64)
    pos = int(uniform(0.03, 0.1) * sample_rate)
    nyquist_margin = 0.45 * sample_rate
    while pos < n:
        if uniform(0, 1) < 0.4:                     # a noise consonant before the vowel
            m = min(int(uniform(0.03, 0.08) * sample_rate), n - pos)
            noise = torch.randn(m, generator=gen, dtype=torch.float64)
            noise = _resonator(noise, min(uniform(2500, 3500), nyquist_margin), 600.0,
                               sample_rate)
            out[pos:pos + m] += _at_rms(noise, uniform(0.03, 0.08)) * _envelope(m, sample_rate,
                                                                                0.01)
            pos += m
        m = min(int(uniform(0.12, 0.3) * sample_rate), n - pos)
        if m <= 0:
            break
        vowel = list(VOWEL_FORMANTS)[int(torch.randint(len(VOWEL_FORMANTS), (),
                                                       generator=gen))]
        voiced = _at_rms(source[pos:pos + m], 1.0) + 0.05 * torch.randn(
            m, generator=gen, dtype=torch.float64)                        # + breath
        for freq, bw in zip(VOWEL_FORMANTS[vowel], FORMANT_BANDWIDTHS):
            if freq * voice.formant_scale < nyquist_margin:
                voiced = _resonator(voiced, freq * voice.formant_scale, bw, sample_rate)
        out[pos:pos + m] += _at_rms(voiced, uniform(0.15, 0.3)) * _envelope(m, sample_rate)
        pos += m + int(uniform(0.05, 0.2) * sample_rate)          # a silence
    out += 1e-4 * torch.randn(n, generator=gen, dtype=torch.float64)
    return (0.9 * out / out.abs().max()).float()


def write_demo_corpus(out_dir, n_speakers: int = 4, clips_per_speaker: int = 20,
                      seconds: float = 1.0, sample_rate: int = 8000, seed: int = 0
                      ) -> list[Path]:
    """Write a folder of speech-like wavs named like FSDD, ``{i % 10}_spk{k}_{i}.wav``, so
    that ``FSDD_SPEAKER_REGEX`` splits them by speaker.

    Returns:
        The written paths, sorted.
    """
    out_dir = Path(out_dir)
    gen = torch.Generator().manual_seed(seed)
    paths = []
    for k in range(n_speakers):
        draw = torch.rand(2, generator=gen, dtype=torch.float64).tolist()
        voice = Voice(pitch_hz=90.0 + 160.0 * draw[0], formant_scale=0.85 + 0.35 * draw[1])
        for i in range(clips_per_speaker):
            path = out_dir / f"{i % 10}_spk{k}_{i}.wav"
            wav = speech_like(seconds, sample_rate, voice, seed=seed * 100_003 + k * 1009 + i)
            save_audio(path, wav, sample_rate)
            paths.append(path)
    return sorted(paths)
