"""Word clips: the labelled clips a word classifier trains and is judged on, its training
batches, loss and validation, and the scores of a set of files under a trained classifier.

The word of a file is the name of its folder (Speech Commands' layout: ``yes/abc_nohash_0.wav``
says "yes", see ``datasets.words_from_folders``). Clips are read as
``datasets.load_word_clips`` reads them: resampled, peak-normalised, optionally passed through
a mu-law quantiser, cut or zero-padded to the classifier's length.

Dimension names: N clips, L samples per clip (``WordClassifier.clip_samples``), K words.

    labels, sides = word_sides(train_files, val_files, test_files, skip={"_unknown_"},
                               where="speech_commands/")
    clips = load_word_sets(labels, sides, sample_rate=16000, n_samples=16000, mu_law_bits=8)
    clips.train.wavs.shape, clips.train.ids.shape          # (N, 16000), (N,)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .datasets import load_word_clips, words_from_folders
from .gen_scores import score_clips

EVAL_BATCH = 256        # validation clips per forward


@dataclass
class LabelledClips:
    """Clips and their words: ``wavs`` (N, L) float32, ``ids`` (N,) int64 class ids."""

    wavs: torch.Tensor
    ids: torch.Tensor

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class WordClipSets:
    """The clips of a train / validation / test split; ``labels`` are the K words of the
    training side, sorted (class id = index)."""

    labels: list[str]
    train: LabelledClips
    validation: LabelledClips
    test: LabelledClips


def word_sides(train_files, val_files, test_files, skip, where
               ) -> tuple[list[str], tuple[list[tuple[Path, str]], ...]]:
    """The words of a split's files, leaving out the folders named in ``skip``.

    Args:
        train_files, val_files, test_files (list of paths): the sides of the split.
        skip (set of str): folder names whose files are left out (``_unknown_``).
        where: the data folder, named in the error.
    Returns:
        (labels: the words of the training side, sorted; (train, validation, test) lists of
        (file, word) pairs).
    Raises:
        ValueError: fewer than 2 words on the training side.
    """
    sides = tuple(words_from_folders(f, skip) for f in (train_files, val_files, test_files))
    labels = sorted({w for _, w in sides[0]})
    if len(labels) < 2:
        raise ValueError(f"{where}: the training side holds {len(labels)} word folders after "
                         f"leaving out {sorted(skip)}; a classifier needs 2 or more")
    return labels, sides


def load_word_sets(labels: list[str], sides, sample_rate: int, n_samples: int,
                   mu_law_bits: int) -> WordClipSets:
    """Load the (train, validation, test) (file, word) pairs of :func:`word_sides` as
    (N, ``n_samples``) clips at ``sample_rate`` (``datasets.load_word_clips``)."""
    train, validation, test = (
        LabelledClips(*load_word_clips(pairs, labels, sample_rate, n_samples, mu_law_bits))
        for pairs in sides)
    return WordClipSets(labels, train, validation, test)


def shifted(wav: torch.Tensor, shift: int) -> torch.Tensor:
    """(L,) -> (L,) moved ``shift`` samples later (earlier when negative), zero-filled.

    >>> shifted(torch.tensor([1.0, 2.0, 3.0]), 1), shifted(torch.tensor([1.0, 2.0, 3.0]), -2)
    (tensor([0., 1., 2.]), tensor([3., 0., 0.]))
    """
    if shift == 0:
        return wav
    out = torch.zeros_like(wav)
    if shift > 0:
        out[shift:] = wav[:-shift]
    else:
        out[:shift] = wav[-shift:]
    return out


def word_batches(clips: LabelledClips, max_shift: int, seed: int) -> Callable:
    """The training loop's ``get_batch`` over ``clips``: clips drawn with replacement, each
    shifted in time by up to ``max_shift`` samples either way (augmentation).

    Returns:
        ``get_batch(index, seq_len, batch_size, rank, world_size) -> {"wav": (B, L),
        "label": (B,)}``, a function of its arguments and ``seed`` alone (``seq_len`` unused:
        clips have their own length).
    """
    def get_batch(index, seq_len, batch_size, rank, world_size):
        gen = torch.Generator().manual_seed((seed * 1_000_003 + index) * world_size + rank)
        picks = torch.randint(0, len(clips), (batch_size,), generator=gen)
        shifts = torch.randint(-max_shift, max_shift + 1, (batch_size,), generator=gen)
        wavs = torch.stack([shifted(clips.wavs[i], int(s)) for i, s in zip(picks, shifts)])
        return {"wav": wavs, "label": clips.ids[picks]}
    return get_batch


def word_loss(model, batch) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy of a ``word_batches`` batch, and its number of clips."""
    return F.cross_entropy(model(batch["wav"]), batch["label"]), len(batch["label"])


def word_eval(clips: LabelledClips) -> Callable:
    """The training loop's ``eval_fn``: ``{"val_loss", "val_accuracy"}`` of the model on
    ``clips`` (the validation side)."""
    def eval_fn(model) -> dict:
        device = next(model.parameters()).device
        logits = torch.cat([model(clips.wavs[i:i + EVAL_BATCH].to(device)).cpu()
                            for i in range(0, len(clips), EVAL_BATCH)])        # (N, K)
        return {"val_loss": float(F.cross_entropy(logits, clips.ids)),
                "val_accuracy": float((logits.argmax(-1) == clips.ids).double().mean())}
    return eval_fn


def score_word_files(classifier, files, skip, mu_law_bits: int, group_size: int = 0) -> dict:
    """The scores (``gen_scores.score_clips``) of audio files under a trained classifier.

    The files are read as the classifier's training clips were (its rate and length, through
    ``mu_law_bits``). When every file's folder is one of the classifier's words, ``accuracy``
    is reported too.

    Args:
        classifier (WordClassifier): trained, with its reference statistics fit.
        files (list of paths): the clips; those in a folder named in ``skip`` are left out.
        group_size (int, 0): also score random groups of this many clips (``score_clips``).
    Returns:
        the ``score_clips`` dict.
    """
    pairs = words_from_folders(files, skip)
    words = sorted({w for _, w in pairs})
    labelled = set(words) <= set(classifier.labels)
    wavs, ids = load_word_clips(pairs, classifier.labels if labelled else words,
                                classifier.config.sample_rate, classifier.clip_samples,
                                mu_law_bits)
    return score_clips(classifier, wavs, ids=ids if labelled else None, group_size=group_size)
