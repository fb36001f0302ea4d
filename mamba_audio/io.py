"""Reading and writing audio files: soundfile for the formats, torchaudio for resampling.

Every file comes back as a mono float32 waveform (L,) at the asked rate. What cannot be
read (an unsupported extension, a corrupt or empty file, a NaN or infinite sample, a rate
outside ``MIN_SAMPLE_RATE``..``MAX_SAMPLE_RATE``) raises ``AudioFileError`` naming the file,
never a silent wrong answer.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from mambaseq.core.atomic import atomic_file

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
NORMALIZE = ("peak", "none")
# Rates accepted from a file's header or an option, in Hz: 1 kHz (below any speech use) to
# 384 kHz (the highest rate of audio interfaces). A header outside them is a corrupt file.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1_000, 384_000


class AudioFileError(ValueError):
    """An audio file that cannot be used; the message names the file and the reason."""


def check_sample_rate(rate, where: str) -> int:
    """``rate`` (Hz) as an int, or a ValueError naming ``where`` (a file or an option) when it
    is not a whole number from ``MIN_SAMPLE_RATE`` to ``MAX_SAMPLE_RATE``."""
    if (isinstance(rate, bool) or not isinstance(rate, (int, np.integer))
            or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE):
        raise ValueError(f"{where}: sample rate {rate!r} Hz is outside {MIN_SAMPLE_RATE} to "
                         f"{MAX_SAMPLE_RATE} Hz")
    return int(rate)


def file_sample_rate(path) -> int:
    """The sample rate (Hz) in an audio file's header, read without its samples.

    Raises:
        AudioFileError: unsupported, missing, empty or undecodable file, or a rate outside
            ``MIN_SAMPLE_RATE``..``MAX_SAMPLE_RATE`` (a corrupt header); names the file.
    """
    path = _check_path(path)
    try:
        rate = sf.info(str(path)).samplerate
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioFileError(f"{path}: cannot decode audio ({err})") from err
    return _file_rate(path, rate)


def common_sample_rate(files) -> int:
    """The one sample rate (Hz) of ``files``, read from their headers (no samples are read).

    Raises:
        AudioFileError: a file whose header rate is not a plausible rate (see
            ``check_sample_rate``), naming it.
        ValueError: files of different rates, naming one of each: give the rate to
            resample them all to instead.
    """
    files = list(files)
    if not files:
        raise ValueError("no audio files to read a sample rate from")
    first = file_sample_rate(files[0])
    for f in files[1:]:
        rate = file_sample_rate(f)
        if rate != first:
            raise ValueError(f"{f}: {rate} Hz, but {files[0]} is {first} Hz; give the sample "
                             "rate to resample all files to (sample_rate)")
    return first


def _file_rate(path: Path, rate) -> int:
    try:
        return check_sample_rate(rate, str(path))
    except ValueError as err:
        raise AudioFileError(f"{err} (a corrupt header?)") from None


def load_audio(path, sample_rate: int | None = None, normalize: str = "none"
               ) -> tuple[torch.Tensor, int]:
    """Read an audio file as a mono float32 waveform.

    Args:
        path (str or Path): a .wav, .flac or .ogg file, any rate, any channel count,
            integer (16/24/32-bit) or float samples.
        sample_rate (int or None, None): resample to this rate (torchaudio's windowed-sinc
            resampler), from ``MIN_SAMPLE_RATE`` to ``MAX_SAMPLE_RATE``; None keeps the
            file's rate.
        normalize (str, "none"): "peak" scales the clip so that max |x| = 1 (a silent clip
            is left as it is); "none" keeps the file's amplitudes.

    Returns:
        (waveform (L,) float32 in about [-1, 1], rate).

    Raises:
        AudioFileError: unsupported extension, unreadable/corrupt/empty/truncated file, NaN
            or inf, a rate outside ``MIN_SAMPLE_RATE``..``MAX_SAMPLE_RATE`` in its header.
        ValueError: ``sample_rate`` outside those bounds.

    >>> _ = save_audio("0_jackson_0.wav", 0.5 * torch.sin(torch.arange(8000) / 5.0), 8000)
    >>> wav, sr = load_audio("0_jackson_0.wav", sample_rate=16000)    # 1 s at 8 kHz, resampled
    >>> wav.shape, wav.dtype, sr
    (torch.Size([16000]), torch.float32, 16000)
    >>> float(load_audio("0_jackson_0.wav", normalize="peak")[0].abs().max())
    1.0
    """
    if normalize not in NORMALIZE:
        raise ValueError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    if sample_rate is not None:
        check_sample_rate(sample_rate, "load_audio(sample_rate=)")
    path = _check_path(path)
    _check_wav_data_size(path)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)   # (L, channels)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioFileError(f"{path}: cannot decode audio ({err})") from err
    rate = _file_rate(path, rate)
    if data.shape[0] == 0:
        raise AudioFileError(f"{path}: the file holds no samples")
    bad = ~np.isfinite(data)
    if bad.any():
        frame, channel = np.argwhere(bad)[0]
        raise AudioFileError(f"{path}: non-finite sample ({data[frame, channel]}) at frame "
                             f"{frame}, channel {channel}")
    wav = torch.from_numpy(data).mean(dim=1)                              # (L,)
    if sample_rate is not None and sample_rate != rate:
        wav = AF.resample(wav, rate, sample_rate)
        rate = sample_rate
    if normalize == "peak":
        peak = wav.abs().max()
        if peak > 0:
            wav = wav / peak
    return wav.contiguous(), rate


def save_audio(path, waveform: torch.Tensor, sample_rate: int, subtype: str = "PCM_16"
               ) -> Path:
    """Write a mono (L,) or multi-channel (channels, L) waveform in [-1, 1] as a wav file.

    Samples outside [-1, 1] are clipped (a PCM file cannot hold them). The file is written
    under a temporary name and renamed, so an interrupted write leaves no half file.

    Args:
        path (str or Path): destination; parent folders are created.
        waveform (Tensor): (L,) or (channels, L), float.
        sample_rate (int): rate written in the header.
        subtype (str, "PCM_16"): soundfile subtype ("PCM_16", "PCM_24", "FLOAT", ...).

    Returns:
        The path written.
    """
    path = Path(path)
    wav = waveform.detach().float().cpu()
    if wav.dim() not in (1, 2):
        raise ValueError(f"{path}: waveform must be (L,) or (channels, L), got {tuple(wav.shape)}")
    if not torch.isfinite(wav).all():
        raise ValueError(f"{path}: refusing to write a waveform with NaN or inf samples")
    data = wav.clamp(-1.0, 1.0).numpy()
    data = data.T if data.ndim == 2 else data                            # (L, channels)
    with atomic_file(path) as tmp:
        sf.write(str(tmp), data, sample_rate, subtype=subtype, format="WAV")
    return path


def _check_wav_data_size(path: Path) -> None:
    """Refuse a WAV whose ``data`` chunk is shorter than its header says (a cut-off copy or
    download): libsndfile reads what is there without a word."""
    if path.suffix.lower() != ".wav":
        return
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return                                  # not RIFF/WAVE: soundfile says why
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return
            kind, length = chunk[:4], int.from_bytes(chunk[4:], "little")
            if kind == b"data":
                held = size - f.tell()
                if length != 0xFFFFFFFF and held < length:   # 0xFFFFFFFF: streamed, unknown
                    raise AudioFileError(f"{path}: truncated: the header promises {length} "
                                         f"bytes of samples, the file holds {held}")
                return
            f.seek(length + (length & 1), 1)        # chunks are padded to even sizes


def _check_path(path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in AUDIO_EXTENSIONS:
        raise AudioFileError(f"{path}: unsupported audio format {path.suffix or '(no extension)'!r};"
                             f" expected one of {', '.join(AUDIO_EXTENSIONS)}")
    if not path.is_file():
        raise AudioFileError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AudioFileError(f"{path}: the file is empty (0 bytes)")
    return path
