"""What a genome language model trains and validates on: the regions of a pretraining run,
their bases, the objectives' losses and the validation functions.

    files, sources, splits = pretraining_regions(fasta=["chr20.fa"], val_fraction=0.1)
    rows = split_rows(files, splits)           # for split.bed
    loss = clm_loss(model, batch)              # (mean loss, tokens)

Coordinates are 0-based, end-exclusive. ``splits`` maps "train"/"val" to one list of
``Window`` per source.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch.nn.functional as F

from .bed import SplitRegion, read_bed, read_split_bed
from .datasets import split_regions
from .fasta import open_sequences
from .metrics import lm_metrics, lm_nll
from .tokenizers import CharTokenizer


def clm_loss(model, batch):
    """Predict every base of the window from [BOS] and the bases before it.

    ``batch["input_ids"]`` (B, L); returns (mean cross-entropy, B * L)."""
    ids = batch["input_ids"]                                               # (B, L)
    inputs = F.pad(ids[:, :-1], (1, 0), value=CharTokenizer.bos_id)        # (B, L)
    logits = model(inputs)                                                 # (B, L, V)
    return F.cross_entropy(logits.flatten(0, 1), ids.flatten()), ids.numel()


def mlm_loss(model, batch):
    """Cross-entropy on the masked positions (``batch["labels"]`` != -100), and their count."""
    logits = model(batch["input_ids"])                                     # (B, L, V)
    labels = batch["labels"]
    return (F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100),
            int((labels != -100).sum()))


def region_text(sources, regions, max_bases=None) -> list[str]:
    """The bases of ``regions[i]`` of every ``sources[i]`` as one list of strings, cut at
    ``max_bases`` in total."""
    out, left = [], max_bases if max_bases is not None else math.inf
    for source, r in ((s, r) for s, rs in zip(sources, regions) for r in rs):
        if left <= 0:
            break
        end = r.end if left == math.inf else min(r.end, r.start + int(left))
        out.append(source.fetch(r.name, r.start, end))
        left -= end - r.start
    return out


def file_regions(sources, bed):
    """Per source, the BED intervals on its chromosomes (None per source without a BED)."""
    if bed is None:
        return [None] * len(sources)
    lengths = {}
    for src in sources:
        for name, n in src.lengths.items():
            if name in lengths:
                raise ValueError(f"bed: chromosome {name!r} is in more than one FASTA file, "
                                 f"so the BED intervals on it are ambiguous")
            lengths[name] = n
    intervals = read_bed(bed, lengths=lengths)
    return [[w for w in intervals if w.name in src.lengths] for src in sources]


def pretraining_regions(fasta=None, split_bed=None, bed=None, val_fraction=0.1,
                        split_by="auto", decompress_gzip=False):
    """The train and validation regions of a pretraining run.

    Either ``fasta`` files (each split by ``split_by``, ``val_fraction`` held out, inside the
    ``bed`` intervals if given), or the ``split_bed`` of a classify-species run (its FASTA
    files, its train and val rows; its test rows are never read).

    Returns:
        (FASTA paths, opened sources, {"train", "val"}: per source a list of Window)
    Raises:
        ValueError: neither or both inputs, a region outside its FASTA, an empty val split.
    """
    if split_bed is None:
        if not fasta:
            raise ValueError("give fasta (FASTA files) or split_bed (a classify-species "
                             "split.bed)")
        sources = [open_sequences(f, decompress_gzip=decompress_gzip) for f in fasta]
        per_file = [split_regions(src, (1 - val_fraction, val_fraction, 0.0), by=split_by,
                                  regions=regions)
                    for src, regions in zip(sources, file_regions(sources, bed))]
        splits = {k: [sp[k] for sp in per_file] for k in ("train", "val")}
        files = list(fasta)
    else:
        if fasta or bed:
            raise ValueError("split_bed names the FASTA files and regions itself; drop fasta "
                             "and bed")
        rows = read_split_bed(split_bed)
        files = list(dict.fromkeys(r.fasta for r in rows if r.split != "test"))
        sources = [open_sequences(f, decompress_gzip=decompress_gzip) for f in files]
        splits = {k: [[r.window for r in rows if r.fasta == f and r.split == k] for f in files]
                  for k in ("train", "val")}
        for f, src, train, val in zip(files, sources, splits["train"], splits["val"]):
            for w in train + val:
                if w.end > src.lengths.get(w.name, -1):
                    raise ValueError(f"{split_bed}: region {w.name}:{w.start}-{w.end} is not "
                                     f"inside a record of {f}")
    if not any(splits["val"]):
        raise ValueError("the validation split is empty; raise val_fraction")
    return files, sources, splits


def split_rows(files, splits) -> list[SplitRegion]:
    """The rows of ``split.bed`` for a pretraining run's regions (no species)."""
    return [SplitRegion(k, ".", f, w) for k in ("train", "val")
            for f, ws in zip(files, splits[k]) for w in ws]


def region_line(r: SplitRegion) -> str:
    """One region of a split as a message shows it: "val chrM:15000-16569 of /abs/h.fa"."""
    w = r.window
    return (f"{r.split} {w.name}:{w.start}-{w.end}{'' if w.strand == '+' else ' (-)'} of "
            f"{Path(r.fasta).resolve()}{'' if r.species == '.' else f' ({r.species})'}")


def clm_eval(val_texts, tokenizer, where):
    """``eval_fn(model) -> {"val_loss", "perplexity", "bits_per_base", "tokens"}``: each of
    ``val_texts`` read in one causal pass; ``where[i]`` ("file:record:start") is named by a
    bad-base error."""
    ids = [tokenizer.encode(t, add_bos=True, source=w) for t, w in zip(val_texts, where)]

    def eval_fn(model):
        device = next(model.parameters()).device
        total, count = 0.0, 0
        for x in ids:
            nll, n = lm_nll(model, x.to(device))
            total, count = total + nll, count + n
        return {"val_loss": total / count, **lm_metrics(total, count)}
    return eval_fn


def mlm_eval(data, seq_len, n_batches=4, batch_size=8):
    """``eval_fn(model) -> {"val_loss"}``: the masked-LM loss on ``n_batches`` fixed batches
    of ``data`` (a ``GenomeWindows`` of the val split)."""
    batches = [data.get_batch(10 ** 9 + i, seq_len, batch_size) for i in range(n_batches)]

    def eval_fn(model):
        device = next(model.parameters()).device
        losses = [mlm_loss(model, {k: v.to(device) for k, v in b.items()})[0].item()
                  for b in batches]
        return {"val_loss": float(np.mean(losses))}
    return eval_fn
