"""Folders of audio files as quantised clips: fixed-length crops for training, whole clips
with padding masks for scoring, and train/test splits by file or by speaker.

Dimension names: B batch, L length (samples). Tokens are quantiser classes (int64).

>>> from mambaseq.mamba_audio.synth import write_demo_corpus
>>> _ = write_demo_corpus("fsdd", n_speakers=3, clips_per_speaker=2, seconds=0.25)
>>> files = find_audio_files("fsdd/")                # FSDD names: {digit}_{speaker}_{index}.wav
>>> [f.name for f in files]
['0_spk0_0.wav', '0_spk1_0.wav', '0_spk2_0.wav', '1_spk0_1.wav', '1_spk1_1.wav', '1_spk2_1.wav']
>>> train, test = split_files(files, by="speaker", speakers=speakers_from_regex(files),
...                           test_speakers=["spk2"])
>>> len(train), [f.name for f in test]
(4, ['0_spk2_0.wav', '1_spk2_1.wav'])
>>> clips = AudioClips.from_files(train, sample_rate=8000, progress=False)
>>> batch = clips.crops(step=0, seq_len=512, batch_size=8)
>>> batch["tokens"].shape, batch["mask"].shape       # (B, seq_len + 1)
(torch.Size([8, 513]), torch.Size([8, 513]))
"""
from __future__ import annotations

import csv
import json
import logging
import mimetypes
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mambaseq.core.atomic import atomic_file
from mambaseq.core.file_cache import file_identity, identity_key
from mambaseq.kernels.cpu_build import cache_root

from .io import AUDIO_EXTENSIONS, load_audio
from .quantize import Quantizer

# FSDD's names, {digit}_{speaker}_{take}.wav; the demo generator writes the same shape.
FSDD_SPEAKER_REGEX = r"(?:^|/)\d+_(?P<speaker>[^_/]+)_\d+\.\w+$"
SPLIT_BY = ("file", "speaker")
CLIP_CACHE_FORMAT = 1       # layout of the clip cache files (in their key)
log = logging.getLogger(__name__)


@dataclass
class AudioFolder:
    """What a folder holds: the audio files read (``AUDIO_EXTENSIONS``), sorted, and the
    audio files left out because their format is not read (.mp3, .m4a, ...: audio by their
    MIME type), sorted."""
    root: Path
    files: list[Path]
    skipped: list[Path] = field(default_factory=list)

    def skipped_note(self) -> str:
        """One line saying how many files were skipped and why ("" when none were)."""
        if not self.skipped:
            return ""
        kinds = Counter(p.suffix.lower() for p in self.skipped)
        return (f"{self.root}: skipped {len(self.skipped)} audio file(s) in formats not read "
                f"({', '.join(f'{n} {ext}' for ext, n in sorted(kinds.items()))}; only "
                f"{', '.join(AUDIO_EXTENSIONS)} are); convert them to .wav or .flac "
                "(e.g. ffmpeg -i in.mp3 out.wav) to use them")


def scan_audio_folder(root) -> AudioFolder:
    """The audio files under ``root`` (recursive), and those skipped (see ``AudioFolder``);
    a file is accepted too, as the folder's one file.

    Raises:
        FileNotFoundError: ``root`` does not exist or holds no audio file it can read.
    """
    root = Path(root)
    if root.is_file():
        return AudioFolder(root, [root])
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    files, skipped = [], []
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in AUDIO_EXTENSIONS:
            if p.is_file():
                files.append(p)
        elif (mimetypes.guess_type(p.name)[0] or "").startswith("audio/") and p.is_file():
            skipped.append(p)
    folder = AudioFolder(root, files, skipped)
    if not files:
        raise FileNotFoundError(f"{root}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) found"
                                + (f"; {folder.skipped_note()}" if skipped else ""))
    return folder


def find_audio_files(root) -> list[Path]:
    """All .wav/.flac/.ogg files under ``root`` (recursive), sorted; a file is accepted too.
    Audio files in other formats (.mp3, ...) are left out with one warning line saying how
    many and why (``scan_audio_folder`` returns them).

    Raises:
        FileNotFoundError: ``root`` does not exist or holds no audio file.
    """
    folder = scan_audio_folder(root)
    if folder.skipped:
        log.warning(folder.skipped_note())
    return folder.files


def speakers_from_regex(files, pattern: str = FSDD_SPEAKER_REGEX, root=None
                        ) -> dict[Path, str]:
    """Speaker of each file from a regex searched in its path (relative to ``root`` when
    given, as a '/'-separated string); the speaker is the group named ``speaker``, else
    group 1.

    Raises:
        ValueError: an invalid pattern or one without a group; naming the first file the
            pattern does not match.
    """
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise ValueError(f"speaker regex {pattern!r} is not a valid regular expression: "
                         f"{err}") from None
    if not regex.groups:
        raise ValueError(f"speaker regex {pattern!r} has no group: the speaker is the group "
                         "named 'speaker', else group 1")
    group = "speaker" if "speaker" in regex.groupindex else 1
    speakers = {}
    for f in files:
        name = (Path(f).relative_to(root) if root else Path(f)).as_posix()
        match = regex.search(name)
        if match is None:
            raise ValueError(f"{f}: speaker regex {pattern!r} does not match this file")
        speakers[Path(f)] = match.group(group)
    return speakers


def speakers_from_csv(csv_path, files, root=None) -> dict[Path, str]:
    """Speaker of each file from a CSV with header columns ``file,speaker``; ``file`` is a
    path relative to ``root`` (or absolute), or a bare file name when that is unambiguous.

    Raises:
        ValueError: a file missing from the CSV (named), or a CSV without those columns.
    """
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not {"file", "speaker"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{csv_path}: expected header columns 'file,speaker', "
                             f"got {reader.fieldnames}")
        table = {row["file"].strip(): row["speaker"].strip() for row in reader}
    speakers = {}
    for f in files:
        f = Path(f)
        keys = [f.as_posix(), f.name]
        if root is not None:
            keys.insert(0, f.relative_to(root).as_posix())
        speaker = next((table[k] for k in keys if k in table), None)
        if speaker is None:
            raise ValueError(f"{f}: not listed in speaker CSV {csv_path}")
        speakers[f] = speaker
    return speakers


def split_files(files, by: str = "file", test_fraction: float = 0.2, speakers=None,
                test_speakers=None, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Split files into (train, test), by file or by speaker.

    Args:
        files (list of paths): the files to split.
        by (str, "file"): "file" holds out a seeded random ``test_fraction`` of the files;
            "speaker" holds out whole speakers, so no test speaker is heard in training.
        test_fraction (float, 0.2): share of files, or of speakers (at least one), held out.
        speakers (dict path -> str, None): required for ``by="speaker"``.
        test_speakers (list of str, None): the held-out speakers; None picks them at random
            (seeded).
        seed (int, 0): seed of the random choice.

    Returns:
        (train files, test files), each sorted.
    """
    if by not in SPLIT_BY:
        raise ValueError(f"split by must be one of {SPLIT_BY}, got {by!r}")
    files = sorted(Path(f) for f in files)
    rng = random.Random(seed)
    if by == "file":
        shuffled = files[:]
        rng.shuffle(shuffled)
        n_test = max(1, round(test_fraction * len(files)))
        test = set(shuffled[:n_test])
    else:
        if speakers is None:
            raise ValueError("split by speaker needs a speaker for each file "
                             "(speakers_from_regex or speakers_from_csv)")
        names = sorted(set(speakers[f] for f in files))
        if test_speakers is None:
            rng.shuffle(names)
            test_speakers = names[:max(1, round(test_fraction * len(names)))]
        unknown = set(test_speakers) - set(names)
        if unknown:
            raise ValueError(f"test speakers {sorted(unknown)} not found; speakers are {names}")
        test = {f for f in files if speakers[f] in set(test_speakers)}
    train = [f for f in files if f not in test]
    if not train or not test:
        raise ValueError(f"split by {by} leaves an empty side: {len(train)} train, "
                         f"{len(test)} test files")
    return train, sorted(test)


@dataclass
class AudioClips(torch.utils.data.Dataset):
    """Quantised clips held in memory; item i is clip i as tokens (L_i,) int64.

    Build with ``from_files``. ``crops`` serves training batches, ``padded`` whole clips.
    """
    clips: list[torch.Tensor]          # each (L_i,) int32 classes
    files: list[Path]
    sample_rate: int
    quantizer: Quantizer

    @classmethod
    def from_files(cls, files, sample_rate: int, quantizer: Quantizer = Quantizer(),
                   normalize: str = "peak", progress: bool = True, cache_dir=None
                   ) -> "AudioClips":
        """Load, mix down, resample to ``sample_rate``, normalise and quantise each file,
        once: the classes of all ``files`` go to the clip cache and later calls read them
        from there.

        The cache is ``<cache_dir>/audio/<key>.tokens`` (the clips one after the other,
        uint8 up to 8 bits, else uint16) and ``<key>.json`` (offsets, lengths), written
        under temporary names and renamed, the JSON last; the key holds every file's
        identity (``core.file_cache``: path, size, mtime, a hash of its ends), the order of
        the files and these settings, so a changed file or setting is decoded again, never
        read from an older cache.

        Args:
            cache_dir (default ``$MAMBASEQ_CACHE_DIR`` or ~/.cache/mambaseq).
        Raises:
            PermissionError: the cache folder cannot be written (names it and
                ``MAMBASEQ_CACHE_DIR``).
        """
        files = [Path(f) for f in files]
        identities = [file_identity(f) for f in files]
        settings = {"sample_rate": sample_rate, "kind": quantizer.kind, "bits": quantizer.bits,
                    "normalize": normalize}
        folder = (cache_root() if cache_dir is None else Path(cache_dir)) / "audio"
        entry = folder / (f"{identity_key([i['path'] for i in identities], settings)[:16]}_"
                          f"{identity_key(CLIP_CACHE_FORMAT, identities)[:8]}_{len(files)}_clips")
        if not Path(f"{entry}.json").exists():
            clips = []
            for f in tqdm(files, desc="loading audio", unit="file", disable=not progress):
                wav, _ = load_audio(f, sample_rate=sample_rate, normalize=normalize)
                clips.append(quantizer.encode(wav).to(torch.int32))
            _write_clip_cache(entry, clips, quantizer, identities)
            return cls(clips, files, sample_rate, quantizer)
        meta = json.loads(Path(f"{entry}.json").read_text())
        flat = np.fromfile(f"{entry}.tokens", dtype=meta["dtype"])
        clips = [torch.from_numpy(flat[o:o + n].astype(np.int32))
                 for o, n in zip(meta["offsets"], meta["lengths"])]
        return cls(clips, files, sample_rate, quantizer)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i) -> torch.Tensor:
        return self.clips[i].long()

    @property
    def n_samples(self) -> int:
        return sum(len(c) for c in self.clips)

    def crops(self, step: int, seq_len: int, batch_size: int, rank: int = 0,
              world_size: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
        """A training batch of random crops, a pure function of its arguments (so that a
        resumed run sees the same batches).

        Each crop has ``seq_len + 1`` tokens: inputs ``[:-1]`` and next-sample targets
        ``[1:]``. Clips are drawn in proportion to their length; a clip shorter than a crop
        is padded with the silence class and masked out.

        Returns:
            {"tokens": (B, seq_len + 1) int64, "mask": (B, seq_len + 1) bool (True = real)}.
        """
        width = seq_len + 1
        # One stream per (seed, step, rank): ranks draw different crops, reruns the same.
        gen = torch.Generator().manual_seed(
            (seed * 1_000_003 + step) * max(world_size, 1) + rank)
        lengths = torch.tensor([len(c) for c in self.clips], dtype=torch.float64)
        picks = torch.multinomial(lengths, batch_size, replacement=True, generator=gen)
        tokens = torch.full((batch_size, width), self.quantizer.silence, dtype=torch.long)
        mask = torch.zeros(batch_size, width, dtype=torch.bool)
        for b, i in enumerate(picks.tolist()):
            clip = self.clips[i]
            start = int(torch.randint(0, max(len(clip) - width, 0) + 1, (), generator=gen))
            piece = clip[start:start + width]
            tokens[b, :len(piece)] = piece.long()
            mask[b, :len(piece)] = True
        return {"tokens": tokens, "mask": mask}

    def padded(self, indices) -> dict[str, torch.Tensor]:
        """Whole clips ``indices`` right-padded with the silence class to the longest.

        Returns:
            {"tokens": (B, L_max) int64, "mask": (B, L_max) bool (True = real)}.
        """
        chosen = [self.clips[i] for i in indices]
        width = max(len(c) for c in chosen)
        tokens = torch.full((len(chosen), width), self.quantizer.silence, dtype=torch.long)
        mask = torch.zeros(len(chosen), width, dtype=torch.bool)
        for b, clip in enumerate(chosen):
            tokens[b, :len(clip)] = clip.long()
            mask[b, :len(clip)] = True
        return {"tokens": tokens, "mask": mask}


def _write_clip_cache(entry: Path, clips: list[torch.Tensor], quantizer: Quantizer,
                      identities: list[dict]) -> None:
    """The clip cache files of ``clips`` (see ``AudioClips.from_files``)."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(f"{entry}.tokens") as tmp:
            dtype = np.uint8 if quantizer.bits <= 8 else np.uint16
            (np.concatenate([c.numpy() for c in clips]) if clips else np.zeros(0)).astype(
                dtype).tofile(tmp)
    except PermissionError as err:
        raise PermissionError(f"cannot write to the cache folder {entry.parent} "
                              f"({err.strerror}); set MAMBASEQ_CACHE_DIR to a writable folder"
                              ) from None
    lengths = [len(c) for c in clips]
    meta = {"format": CLIP_CACHE_FORMAT, "dtype": np.dtype(dtype).name, "files": identities,
            "lengths": lengths, "offsets": np.cumsum([0] + lengths[:-1]).tolist()}
    with atomic_file(f"{entry}.json") as tmp:
        tmp.write_text(json.dumps(meta) + "\n")


def words_from_folders(files, skip=("_unknown_",)) -> list[tuple[Path, str]]:
    """(file, word) pairs where the word is the name of the file's folder (Speech Commands'
    layout, ``yes/0a7c2a8d_nohash_0.wav``), leaving out the folders named in ``skip``."""
    return [(Path(f), Path(f).parent.name) for f in files if Path(f).parent.name not in skip]


def load_word_clips(pairs, labels, sample_rate: int, n_samples: int, mu_law_bits: int = 8,
                    progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed-length clips of labelled files, read as the audio model reads them.

    Each file is resampled, peak-normalised and, when ``mu_law_bits`` is non-zero, passed
    through that mu-law quantiser and back (so that real clips carry the same quantisation
    noise as generated ones), then cut or zero-padded at the end to ``n_samples``.

    Args:
        pairs (list of (path, word)): e.g. from ``words_from_folders``.
        labels (list of str): class names; class id = index.

    Returns:
        (waveforms (N, n_samples) float32, class ids (N,) int64).

    Raises:
        ValueError: no pairs, or a word that is not among ``labels`` (named).
    """
    if not pairs:
        raise ValueError("no labelled clips to load")
    index = {w: i for i, w in enumerate(labels)}
    unknown = sorted({w for _, w in pairs} - set(index))
    if unknown:
        raise ValueError(f"words {unknown} are not among the labels {list(labels)}")
    quantizer = Quantizer("mu_law", mu_law_bits) if mu_law_bits else None
    wavs = torch.zeros(len(pairs), n_samples)
    for row, (path, _) in enumerate(tqdm(pairs, desc="loading clips", unit="file",
                                         disable=not progress)):
        wav, _ = load_audio(path, sample_rate=sample_rate, normalize="peak")
        if quantizer is not None:
            wav = quantizer.decode(quantizer.encode(wav))
        wavs[row, :min(len(wav), n_samples)] = wav[:n_samples]
    return wavs, torch.tensor([index[w] for _, w in pairs])
