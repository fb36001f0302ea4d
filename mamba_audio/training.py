"""What an audio model trains and is scored on: the split of a folder of recordings (by
speaker or by file) and the run's ``split.json`` that keeps it, the next-sample loss, the
validation function, and the scoring of whole clips.

    split = FolderSplit("fsdd/", by="speaker", test_speakers=("theo",), val_fraction=0.1)
    train, val, test = split_of_run(split, "runs/audio")  # and runs/audio/split.json
    loss, n = lm_loss(model, clips.crops(0, 2048, 8))      # (mean nats, samples scored)
    bits, n = clips_nll_bits(model, test_clips)            # whole clips, streamed

Dimension names: B batch, L length (samples). A run's ``split.json`` is
``{"train": [file, ...], "validation": [...], "test": [...]}``; with no validation share,
"validation" lists the test files (the run validated on them).
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from mambaseq.core.atomic import atomic_file

from .datasets import (FSDD_SPEAKER_REGEX, AudioClips, find_audio_files, speakers_from_csv,
                       speakers_from_regex, split_files)
from .model import stream_nll_bits

SPLIT_FILE = "split.json"                  # <run>/split.json: the files of each side
SPLIT_SIDES = ("train", "validation", "test")


@dataclass(frozen=True)
class FolderSplit:
    """How the recordings under ``data`` are split into train, validation and test files.

    Args:
        data: folder of .wav/.flac/.ogg files (searched recursively).
        by: "speaker" holds out whole speakers (none is heard on two sides), "file" a
            seeded random share of the files.
        speaker_regex: regex on each file's path below ``data``; its group ``speaker`` (or
            group 1) is the speaker.
        speakers_csv: CSV with columns file,speaker, used instead of ``speaker_regex``.
        test_speakers: the held-out speakers; None holds out a seeded random
            ``test_fraction`` of them.
        test_fraction: share of the speakers (or files) held out when not named.
        seed: seed of the random split (the validation split uses ``seed + 1``).
        val_fraction: share of the training speakers (or files) set apart for validation,
            so that nothing chosen on validation has seen the test side; 0 validates on the
            test side.
    """

    data: str | Path
    by: str = "speaker"
    speaker_regex: str = FSDD_SPEAKER_REGEX
    speakers_csv: str | Path | None = None
    test_speakers: tuple[str, ...] | None = None
    test_fraction: float = 0.25
    seed: int = 0
    val_fraction: float = 0.0

    def speakers(self, files) -> dict[Path, str] | None:
        """The speaker of each of ``files`` (by ``speakers_csv`` or ``speaker_regex``); None
        when the split is by file."""
        if self.by != "speaker":
            return None
        if self.speakers_csv:
            return speakers_from_csv(self.speakers_csv, files, root=self.data)
        return speakers_from_regex(files, self.speaker_regex, root=self.data)

    def train_test(self) -> tuple[list[Path], list[Path]]:
        """(training side, test side) of the files under ``data``, each sorted; the
        training side still holds the validation files."""
        files = find_audio_files(self.data)
        return split_files(files, by=self.by, test_fraction=self.test_fraction,
                           speakers=self.speakers(files),
                           test_speakers=list(self.test_speakers) if self.test_speakers
                           else None, seed=self.seed)

    def sides(self) -> tuple[list[Path], list[Path], list[Path]]:
        """(train, validation, test) files: ``val_fraction`` of the training side's
        speakers (or files) set apart for validation, or the test files when it is 0."""
        train, test = self.train_test()
        if not self.val_fraction:
            return train, test, test
        train, val = split_files(train, by=self.by, test_fraction=self.val_fraction,
                                 speakers=self.speakers(train), seed=self.seed + 1)
        return train, val, test


def write_split(path, sides) -> Path:
    """Write (train, validation, test) files to the split file ``path`` (temp + rename)."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps({side: [str(f) for f in files]
                                   for side, files in zip(SPLIT_SIDES, sides)},
                                  indent=1) + "\n")
    return Path(path)


def read_split(path, why: str, todo: str, need=SPLIT_SIDES
               ) -> tuple[list[Path], list[Path], list[Path]]:
    """The (train, validation, test) files of the split file ``path``.

    Args:
        why: what the split is read for ("resume"), the start of each message.
        todo: what the user can do, the end of each message.
        need: the sides whose files must all exist.
    Raises:
        ValueError: ``path`` is not a split file this toolkit wrote, or a file of a side in
            ``need`` is gone (naming the first, and the count).
    """
    path = Path(path)
    try:
        saved = json.loads(path.read_text())
        sides = tuple([Path(f) for f in saved[side]] for side in SPLIT_SIDES)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{why}: {path} is not a split this toolkit wrote ({e!r}); "
                         f"{todo}") from None
    needed = {f for side, files in zip(SPLIT_SIDES, sides) if side in need for f in files}
    gone = sorted(f for f in needed if not f.is_file())
    if gone:
        raise ValueError(f"{why}: {gone[0]} ({len(gone)} file(s) in all) of the run's split "
                         f"{path} is gone; {todo}")
    return sides


def split_of_run(split: FolderSplit, out, resume: bool = False, write: bool = True
                 ) -> tuple[list[Path], list[Path], list[Path]]:
    """(train, validation, test) files of the run in folder ``out``.

    A new run derives them from ``split`` and writes them to ``out/split.json``; a resumed
    run takes the split it started with from there, so that no file changes side when
    files were added to ``split.data`` since (they are left out, with a note on stderr).

    Args:
        write: False on the processes that leave the writing (and the note) to another.
    Raises:
        ValueError: on resume, a split.json that cannot be read or a file of it that is gone.
    """
    path = Path(out) / SPLIT_FILE
    if resume and path.is_file():
        sides = read_split(path, "resume", "restore it or start a new run in another out "
                                           "folder")
        listed = {f for files in sides for f in files}
        added = sorted(set(find_audio_files(split.data)) - listed)
        if added and write:
            print(f"[mambaseq] resume keeps the run's split {path}: {len(added)} file(s) "
                  f"added to {split.data} since the run started (e.g. {added[0]}) are not "
                  "used", file=sys.stderr)
        return sides
    sides = split.sides()
    if write:
        write_split(path, sides)
    return sides


def run_split_file(model_dir) -> Path | None:
    """The split.json of the run that wrote the model folder ``model_dir`` (``OUT/model``
    or a checkpoint ``OUT/checkpoints/NAME``): ``OUT/split.json``, or None without one."""
    parent = Path(model_dir).resolve().parent
    path = (parent.parent if parent.name == "checkpoints" else parent) / SPLIT_FILE
    return path if path.is_file() else None


class HeldOut(NamedTuple):
    """The test side a model is scored on and the training side it was fit on.

    train: the training side (train and validation files), sorted.
    test: the held-out files, sorted.
    split_file: the run's split.json they come from; None when derived from the options.
    """

    train: list[Path]
    test: list[Path]
    split_file: Path | None = None


def held_out_side(split: FolderSplit, model_dir=None, need_train: bool = False) -> HeldOut:
    """The held-out side of the model in ``model_dir``: the test side of its run's own
    split.json when the run folder holds one (so that files added to ``split.data`` since
    training never count as held out), else the test side ``split`` derives.

    Args:
        need_train: the training side will be read too (all its files must exist).
    Raises:
        ValueError: the run's split.json cannot be read, or a file it lists is gone.
    """
    path = run_split_file(model_dir) if model_dir is not None else None
    if path is None:
        return HeldOut(*split.train_test())
    train, val, test = read_split(path, "the held-out side", "restore it to score the run's "
                                  "own test side", need=SPLIT_SIDES if need_train else ("test",))
    held = set(test)
    return HeldOut(sorted({f for f in train + val if f not in held}), test, path)


def lm_loss(model, batch) -> tuple[torch.Tensor, int]:
    """Mean next-sample cross-entropy (nats) over the real samples of a crop batch.

    ``batch``: {"tokens": (B, L + 1) int64, "mask": (B, L + 1) bool} (``AudioClips.crops``);
    returns (mean loss, samples scored)."""
    tokens, mask = batch["tokens"], batch["mask"]                        # (B, L + 1)
    logits = model(tokens[:, :-1])                                        # (B, L, C)
    keep = mask[:, 1:]
    loss = F.cross_entropy(logits[keep], tokens[:, 1:][keep])
    return loss, int(keep.sum())


def lm_eval(clips: AudioClips, n_batches: int, seq_len: int, batch_size: int, seed: int):
    """``eval_fn(model) -> {"val_loss", "val_bits_per_sample"}``: the next-sample loss on
    ``n_batches`` fixed crop batches of ``clips`` (the same at every validation)."""
    batches = [clips.crops(i, seq_len, batch_size, seed=seed) for i in range(n_batches)]

    def eval_fn(model):
        nats = count = 0.0
        device = next(model.parameters()).device
        for batch in batches:
            loss, n = lm_loss(model, {k: v.to(device) for k, v in batch.items()})
            nats, count = nats + float(loss) * n, count + n
        return {"val_loss": nats / count, "val_bits_per_sample": nats / count / math.log(2)}
    return eval_fn


def clips_nll_bits(model, clips: AudioClips, chunk_size: int = 2 ** 14,
                   batch_samples: int = 2 ** 16, device=None) -> tuple[float, int]:
    """Negative log2-likelihood of whole clips, each sample but a clip's first predicted
    from all before it.

    Clips of similar length are scored together, about ``batch_samples`` samples a batch,
    in chunks of ``chunk_size`` that pass the recurrent state on (``stream_nll_bits``), so
    memory is bounded by chunk x batch whatever a clip's length.

    Returns:
        (total bits, samples scored).
    """
    device = device if device is not None else next(model.parameters()).device
    batches, current = [], []       # clips of similar length, about batch_samples each
    for i in sorted(range(len(clips)), key=lambda i: len(clips.clips[i])):
        if current and (len(current) + 1) * len(clips.clips[i]) > batch_samples:
            batches.append(current)
            current = []
        current.append(i)
    batches.append(current)
    bits, count = 0.0, 0
    for indices in batches:
        batch = clips.padded(indices)
        b, n = stream_nll_bits(model, batch["tokens"].to(device), batch["mask"].to(device),
                               chunk_size=chunk_size)
        bits, count = bits + b, count + n
    return bits, count
