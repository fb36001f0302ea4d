"""Species calls on new sequences: a trained classifier applied to windows of records of any
length, in memory bounded by one batch of windows.

Dimension names: B batch (windows), W window length (bases), C classes.

A record is cut into windows [start, start + W) at a fixed stride; when the last of them
stops short of the record's end, one more window [L - W, L) covers the tail, so every base
is seen. A record shorter than W is one window of its whole length. Windows without a
single A, C, G or T (assembly gaps, an all-N record) are skipped. Windows are read one at a
time from the file (``fasta.open_sequences``: pyfaidx for FASTA), batched, and a record's
call is the mean of its windows' class probabilities.

Several classifiers of the same classes (e.g. one per seed of a classify-species run) can
score as one, ``ClassifierEnsemble``: the renormalised mean of their class log-probabilities.

>>> from mambaseq.mamba_bio import open_sequences, write_fasta
>>> tok = CharTokenizer()                     # a model folder, as a classify-species run writes
>>> clf = core.SequenceClassifier(core.SequenceClassifierConfig(
...     vocab_size=tok.vocab_size, d_model=16, n_layer=1, num_classes=2))
>>> clf.save_pretrained("model", extra_json=core.model_assets(tok, ["human", "mouse"]))
>>> model, tokenizer, classes = load_classifier("model")
>>> _ = write_fasta("new.fa", {"r1": "ACGT" * 600, "r2": "ACGTN" * 50})   # 2400, 250 bases
>>> for record in predict_records(model, tokenizer, open_sequences("new.fa"), window=1000):
...     print(record.name, record.windows, record.mean_probs.shape)      # mean_probs (C,)
r1 3 (2,)
r2 1 (2,)
>>> model, tokenizer, classes = load_classifiers(["model", "model"])  # e.g. one per seed
>>> type(model).__name__, classes
('ClassifierEnsemble', ['human', 'mouse'])
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from mambaseq import core
from mambaseq.core.model_folder import CLASSES_FILE, TOKENIZER_FILE, read_classes

from . import heads  # noqa: F401  (registers MaskedLM: its folder gets "not a classifier")
from .tokenizers import CharTokenizer


def load_classifier(directory, device: str = "cpu"
                    ) -> tuple[core.SequenceClassifier, CharTokenizer, list[str]]:
    """The species classifier saved in ``directory`` with its tokenizer and class names.

    Any folder of a classify-species run that carries config.json, model.safetensors,
    tokenizer.json and classes.json: ``OUT/model``, ``OUT/checkpoints/best``,
    ``OUT/checkpoints/step_*``.

    Returns:
        (model in eval mode on ``device``, tokenizer, class names in logit order).
    Raises:
        FileNotFoundError: the folder, or one of its four files, is missing.
        ValueError: the folder holds another model (e.g. pretrain-genome's language model),
            its class names do not match the model's outputs (count, distinct strings), or
            its tokenizer.json is not valid or makes ids the model cannot read; names the file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"model folder not found: {directory}")
    model = core.load_pretrained(directory, device=device)
    if not isinstance(model, core.SequenceClassifier):
        raise ValueError(f"{directory} holds a {type(model).__name__}, not a species classifier "
                         "(give the model/ or a checkpoints/ folder of a classify-species run)")
    for name in (TOKENIZER_FILE, CLASSES_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory}: no {name} in this classifier folder (a "
                                    "classify-species folder carries its tokenizer and class "
                                    "names; try the run's model/ folder)")
    classes = read_classes(directory, model.config.num_classes)
    tokenizer = CharTokenizer.load(directory)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"{directory / TOKENIZER_FILE}: {tokenizer.vocab_size} tokens, more "
                         f"than the {model.config.vocab_size} the model reads")
    return model, tokenizer, classes


class ClassifierEnsemble(torch.nn.Module):
    """Species classifiers of the same classes scored as one: a window's class
    log-probabilities are ``core.mean_log_probs`` of the members' (each with its own strand
    averaging), the rule strand averaging uses too."""

    def __init__(self, members: list[core.SequenceClassifier]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one classifier")
        if len({m.config.num_classes for m in members}) > 1:
            raise ValueError("the classifiers of an ensemble must have the same classes, got "
                             f"{[m.config.num_classes for m in members]} outputs")
        self.members = torch.nn.ModuleList(members)
        self.config = members[0].config                  # what callers read: num_classes

    def log_probs(self, ids, mask=None):
        """ids (B, L), mask (B, L) -> class log-probabilities (B, C)."""
        return core.mean_log_probs(m.log_probs(ids, mask) for m in self.members)


def load_classifiers(directories, device: str = "cpu"):
    """``load_classifier`` of one folder, or of several as a ``ClassifierEnsemble``: all must
    have the same class names in the same order and the same tokenizer settings.

    Returns:
        (model or ensemble in eval mode, tokenizer, class names).
    Raises:
        ValueError: naming the folder whose classes or tokenizer differ from the first's.
    """
    directories = [Path(d) for d in directories]
    loaded = [load_classifier(d, device) for d in directories]
    model, tokenizer, classes = loaded[0]
    if len(loaded) == 1:
        return model, tokenizer, classes
    for d, (_, tok, names) in zip(directories[1:], loaded[1:]):
        if names != classes:
            raise ValueError(f"{d}: its classes {names} are not those of {directories[0]} "
                             f"({classes}); an ensemble needs the same classes in the same order")
        if tok.to_config() != tokenizer.to_config():
            raise ValueError(f"{d}: its tokenizer {tok.to_config()} differs from that of "
                             f"{directories[0]} ({tokenizer.to_config()})")
    return ClassifierEnsemble([m for m, _, _ in loaded]).eval(), tokenizer, classes


def window_spans(length: int, window: int, stride: int) -> Iterator[tuple[int, int]]:
    """[start, end) of the windows of a record of ``length`` bases: every ``stride`` bases,
    then one window ending at the record's end if the last stopped short; a record shorter
    than ``window`` gives the single span [0, length) (none when it is empty).

    >>> list(window_spans(10, 4, 3))
    [(0, 4), (3, 7), (6, 10)]
    >>> list(window_spans(11, 4, 4))
    [(0, 4), (4, 8), (7, 11)]
    """
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be positive, got {window} and {stride}")
    if length <= window:
        if length > 0:
            yield 0, length
        return
    start = 0
    for start in range(0, length - window + 1, stride):
        yield start, start + window
    if start + window < length:
        yield length - window, length


def has_base(seq: str) -> bool:
    """True when ``seq`` holds at least one A, C, G or T (either case)."""
    return any(b in seq for b in "ACGTacgt")


@torch.inference_mode()
def class_probabilities(model: core.SequenceClassifier | ClassifierEnsemble,
                        ids: torch.Tensor) -> np.ndarray:
    """ids (B, W) -> class probabilities (B, C) as float64 (rows sum to 1); both strands
    averaged for a model built with ``strand_average``."""
    device = next(model.parameters()).device
    log_probs = model.log_probs(ids.to(device)).double()                     # (B, C)
    return torch.softmax(log_probs, dim=-1).cpu().numpy()


def window_probabilities(model: core.SequenceClassifier | ClassifierEnsemble,
                         tokenizer: CharTokenizer, seqs: list[str],
                         tokens_per_batch: int = 64_000) -> np.ndarray:
    """Class probabilities (n, C) of windows ``seqs`` of one length, batched by tokens."""
    model.eval()
    batch_size = max(1, tokens_per_batch // max(1, len(seqs[0]))) if seqs else 1
    parts = [class_probabilities(model, torch.stack([tokenizer.encode(s)
                                                     for s in seqs[i:i + batch_size]]))
             for i in range(0, len(seqs), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, model.config.num_classes))


@dataclass
class RecordPrediction:
    """One record's call: how many windows were scored and their summed probabilities (C,)."""
    name: str
    length: int
    windows: int = 0
    prob_sum: np.ndarray | None = None                  # (C,)

    def add(self, probs: np.ndarray) -> None:
        """Count a batch of window probabilities (B, C)."""
        self.windows += len(probs)
        part = probs.sum(0)
        self.prob_sum = part if self.prob_sum is None else self.prob_sum + part

    @property
    def mean_probs(self) -> np.ndarray | None:
        """(C,) mean class probabilities over the windows; None when none was scored."""
        return None if self.prob_sum is None else self.prob_sum / self.windows


def predict_windows(model, tokenizer: CharTokenizer, source, name: str, window: int,
                    stride: int, batch_size: int = 32, where: str = ""
                    ) -> Iterator[tuple[list[tuple[int, int]], np.ndarray]]:
    """Class probabilities of the windows of record ``name`` of ``source`` (a ``Genome`` or
    ``Records``), one batch at a time: yields (spans, probs (B, C)); all-N windows are
    skipped. Only one batch of windows is held at once.

    Args:
        window (int), stride (int): as in ``window_spans``.
        batch_size (int, 32): windows per forward pass.
        where (str): names the file in tokenizer errors.
    """
    spans, ids = [], []
    for start, end in window_spans(source.lengths[name], window, stride):
        seq = source.fetch(name, start, end)
        if not has_base(seq):
            continue
        spans.append((start, end))
        ids.append(tokenizer.encode(seq, source=f"{where}:{name}:{start}"))
        # A batch holds windows of one length (only a short record's single window differs).
        if len(ids) == batch_size:
            yield spans, class_probabilities(model, torch.stack(ids))
            spans, ids = [], []
    if ids:
        yield spans, class_probabilities(model, torch.stack(ids))


def predict_records(model, tokenizer: CharTokenizer, source, window: int,
                    stride: int | None = None, batch_size: int = 32, where: str = "",
                    on_batch=None) -> Iterator[RecordPrediction]:
    """One ``RecordPrediction`` per record of ``source``, in file order.

    Args:
        stride (int, default ``window``): step between window starts.
        on_batch (callable, optional): called as ``on_batch(name, spans, probs)`` with every
            batch of window probabilities (B, C), e.g. to write them out as they come.
    """
    stride = stride or window
    for name in source.names:
        record = RecordPrediction(name, source.lengths[name])
        for spans, probs in predict_windows(model, tokenizer, source, name, window, stride,
                                            batch_size, where):
            record.add(probs)
            if on_batch is not None:
                on_batch(name, spans, probs)
        yield record
